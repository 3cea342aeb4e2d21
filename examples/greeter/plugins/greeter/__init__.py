"""The greeter plugin: one servicer, a greeting from config, a start hook."""

from typing import Any

from acme.greeter.v1 import greeter_pb2, greeter_pb2_grpc

from nexus_grpc import FieldViolation, InvalidArgumentError, Plugin, PluginContext


class GreeterService(greeter_pb2_grpc.GreeterServiceServicer):
    """Implements acme.greeter.v1.GreeterService."""

    def __init__(self, ctx: PluginContext) -> None:
        self._greeting = str(ctx.config.get("greeting", "Hello"))

    async def SayHello(
        self, request: greeter_pb2.SayHelloRequest, context: Any
    ) -> greeter_pb2.SayHelloResponse:
        if not request.name:
            raise InvalidArgumentError([FieldViolation("name", "required")])
        return greeter_pb2.SayHelloResponse(message=f"{self._greeting}, {request.name}!")


async def start(ctx: PluginContext) -> None:
    ctx.logger.info("greeter ready")


plugin = Plugin(services=[GreeterService], on_start=start)
