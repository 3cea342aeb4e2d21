import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nexus.events.v1 import events_pb2 as _events_pb2
from nexus.options.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_DENIED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]

class RestartPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_POLICY_UNSPECIFIED: _ClassVar[RestartPolicy]
    RESTART_POLICY_ROLLING: _ClassVar[RestartPolicy]

class Category(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNSPECIFIED: _ClassVar[Category]
    CATEGORY_BUSINESS: _ClassVar[Category]
    CATEGORY_INTEGRATION: _ClassVar[Category]
    CATEGORY_ANALYTICS: _ClassVar[Category]
    CATEGORY_SECURITY: _ClassVar[Category]

class PluginState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLUGIN_STATE_UNSPECIFIED: _ClassVar[PluginState]
    PLUGIN_STATE_DISCOVERED: _ClassVar[PluginState]
    PLUGIN_STATE_SERVING: _ClassVar[PluginState]
    PLUGIN_STATE_FAILED: _ClassVar[PluginState]
    PLUGIN_STATE_STOPPED: _ClassVar[PluginState]
    PLUGIN_STATE_DISABLED: _ClassVar[PluginState]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_DENIED: Outcome
OUTCOME_FAILED: Outcome
RESTART_POLICY_UNSPECIFIED: RestartPolicy
RESTART_POLICY_ROLLING: RestartPolicy
CATEGORY_UNSPECIFIED: Category
CATEGORY_BUSINESS: Category
CATEGORY_INTEGRATION: Category
CATEGORY_ANALYTICS: Category
CATEGORY_SECURITY: Category
PLUGIN_STATE_UNSPECIFIED: PluginState
PLUGIN_STATE_DISCOVERED: PluginState
PLUGIN_STATE_SERVING: PluginState
PLUGIN_STATE_FAILED: PluginState
PLUGIN_STATE_STOPPED: PluginState
PLUGIN_STATE_DISABLED: PluginState

class LoadPluginRequest(_message.Message):
    __slots__ = ("name", "expected_code_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CODE_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_code_hash: str
    def __init__(self, name: _Optional[str] = ..., expected_code_hash: _Optional[str] = ...) -> None: ...

class UnloadPluginRequest(_message.Message):
    __slots__ = ("name", "cascade", "drain_timeout_millis")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_MILLIS_FIELD_NUMBER: _ClassVar[int]
    name: str
    cascade: bool
    drain_timeout_millis: int
    def __init__(self, name: _Optional[str] = ..., cascade: _Optional[bool] = ..., drain_timeout_millis: _Optional[int] = ...) -> None: ...

class ReloadPluginRequest(_message.Message):
    __slots__ = ("name", "expected_code_hash", "drain_timeout_millis", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CODE_HASH_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_MILLIS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_code_hash: str
    drain_timeout_millis: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., expected_code_hash: _Optional[str] = ..., drain_timeout_millis: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class PluginChange(_message.Message):
    __slots__ = ("plugins", "plugin", "services_added", "services_removed", "methods_added", "methods_removed", "http_routes_added", "http_routes_removed", "calls_cut", "swap_millis")
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    SERVICES_ADDED_FIELD_NUMBER: _ClassVar[int]
    SERVICES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    METHODS_ADDED_FIELD_NUMBER: _ClassVar[int]
    METHODS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    HTTP_ROUTES_ADDED_FIELD_NUMBER: _ClassVar[int]
    HTTP_ROUTES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    CALLS_CUT_FIELD_NUMBER: _ClassVar[int]
    SWAP_MILLIS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedScalarFieldContainer[str]
    plugin: Plugin
    services_added: _containers.RepeatedScalarFieldContainer[str]
    services_removed: _containers.RepeatedScalarFieldContainer[str]
    methods_added: _containers.RepeatedScalarFieldContainer[str]
    methods_removed: _containers.RepeatedScalarFieldContainer[str]
    http_routes_added: _containers.RepeatedScalarFieldContainer[str]
    http_routes_removed: _containers.RepeatedScalarFieldContainer[str]
    calls_cut: int
    swap_millis: float
    def __init__(self, plugins: _Optional[_Iterable[str]] = ..., plugin: _Optional[_Union[Plugin, _Mapping]] = ..., services_added: _Optional[_Iterable[str]] = ..., services_removed: _Optional[_Iterable[str]] = ..., methods_added: _Optional[_Iterable[str]] = ..., methods_removed: _Optional[_Iterable[str]] = ..., http_routes_added: _Optional[_Iterable[str]] = ..., http_routes_removed: _Optional[_Iterable[str]] = ..., calls_cut: _Optional[int] = ..., swap_millis: _Optional[float] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("group", "page_size", "page_token")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    group: str
    page_size: int
    page_token: str
    def __init__(self, group: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    next_page_token: str
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("id", "group", "event", "attempts", "error", "entry_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    group: str
    event: _events_pb2.Envelope
    attempts: int
    error: str
    entry_id: str
    def __init__(self, id: _Optional[str] = ..., group: _Optional[str] = ..., event: _Optional[_Union[_events_pb2.Envelope, _Mapping]] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ..., entry_id: _Optional[str] = ...) -> None: ...

class RedriveDeadLetterRequest(_message.Message):
    __slots__ = ("group", "id")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    group: str
    id: str
    def __init__(self, group: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RedriveDeadLetterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplayEventsRequest(_message.Message):
    __slots__ = ("group", "event_type", "since_entry_id", "since_time", "since_event_id")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SINCE_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_TIME_FIELD_NUMBER: _ClassVar[int]
    SINCE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    group: str
    event_type: str
    since_entry_id: str
    since_time: _timestamp_pb2.Timestamp
    since_event_id: str
    def __init__(self, group: _Optional[str] = ..., event_type: _Optional[str] = ..., since_entry_id: _Optional[str] = ..., since_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., since_event_id: _Optional[str] = ...) -> None: ...

class ReplayEventsResponse(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: str
    def __init__(self, position: _Optional[str] = ...) -> None: ...

class GetEventStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventStats(_message.Message):
    __slots__ = ("backend", "groups")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    groups: _containers.RepeatedCompositeFieldContainer[EventGroupStats]
    def __init__(self, backend: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[EventGroupStats, _Mapping]]] = ...) -> None: ...

class EventGroupStats(_message.Message):
    __slots__ = ("group", "pending", "lag", "dead_letters", "event_types")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    group: str
    pending: int
    lag: int
    dead_letters: int
    event_types: _containers.RepeatedCompositeFieldContainer[EventTypeStats]
    def __init__(self, group: _Optional[str] = ..., pending: _Optional[int] = ..., lag: _Optional[int] = ..., dead_letters: _Optional[int] = ..., event_types: _Optional[_Iterable[_Union[EventTypeStats, _Mapping]]] = ...) -> None: ...

class EventTypeStats(_message.Message):
    __slots__ = ("event_type", "pending", "lag")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    pending: int
    lag: int
    def __init__(self, event_type: _Optional[str] = ..., pending: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class ListAuditRecordsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "actor", "action")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    actor: str
    action: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class ListAuditRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "time", "actor", "action", "target", "outcome", "reason", "request_id", "transport", "peer")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    target: str
    outcome: Outcome
    reason: str
    request_id: str
    transport: str
    peer: str
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., transport: _Optional[str] = ..., peer: _Optional[str] = ...) -> None: ...

class RestartWorkersRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: RestartPolicy
    def __init__(self, policy: _Optional[_Union[RestartPolicy, str]] = ...) -> None: ...

class RestartWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    def __init__(self, workers: _Optional[int] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes",)
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[StorageIndex]
    def __init__(self, indexes: _Optional[_Iterable[_Union[StorageIndex, _Mapping]]] = ...) -> None: ...

class StorageIndex(_message.Message):
    __slots__ = ("name", "message_type", "definition", "retire_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    RETIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    message_type: str
    definition: str
    retire_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., message_type: _Optional[str] = ..., definition: _Optional[str] = ..., retire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RetireIndexesRequest(_message.Message):
    __slots__ = ("message_type",)
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    message_type: str
    def __init__(self, message_type: _Optional[str] = ...) -> None: ...

class RetireIndexesResponse(_message.Message):
    __slots__ = ("retired", "dropped", "kept", "drop_delay")
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    DROP_DELAY_FIELD_NUMBER: _ClassVar[int]
    retired: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    kept: _containers.RepeatedScalarFieldContainer[str]
    drop_delay: float
    def __init__(self, retired: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., kept: _Optional[_Iterable[str]] = ..., drop_delay: _Optional[float] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    def __init__(self, plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ...) -> None: ...

class GetPluginRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("name", "version", "category", "description", "source", "state", "error", "requires", "services", "generation", "code_hash", "contract_hash", "swap_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CODE_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    SWAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    category: Category
    description: str
    source: str
    state: PluginState
    error: str
    requires: _containers.RepeatedScalarFieldContainer[str]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    generation: int
    code_hash: str
    contract_hash: str
    swap_error: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., category: _Optional[_Union[Category, str]] = ..., description: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[_Union[PluginState, str]] = ..., error: _Optional[str] = ..., requires: _Optional[_Iterable[str]] = ..., services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., generation: _Optional[int] = ..., code_hash: _Optional[str] = ..., contract_hash: _Optional[str] = ..., swap_error: _Optional[str] = ...) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("name", "serving")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    name: str
    serving: bool
    def __init__(self, name: _Optional[str] = ..., serving: _Optional[bool] = ...) -> None: ...
