import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nexus.options.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PasswordRecord(_message.Message):
    __slots__ = ("id", "hash")
    ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    id: str
    hash: str
    def __init__(self, id: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class RefreshRecord(_message.Message):
    __slots__ = ("id", "username", "revoked", "expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    username: str
    revoked: bool
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., username: _Optional[str] = ..., revoked: _Optional[bool] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SessionRecord(_message.Message):
    __slots__ = ("id", "epoch", "revoked")
    ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    epoch: int
    revoked: bool
    def __init__(self, id: _Optional[str] = ..., epoch: _Optional[int] = ..., revoked: _Optional[bool] = ...) -> None: ...

class LoginFailureRecord(_message.Message):
    __slots__ = ("id", "failures", "throttled", "unaudited", "first_time", "last_time", "locked_until", "sources", "reported_lock")
    ID_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    UNAUDITED_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_FIELD_NUMBER: _ClassVar[int]
    LOCKED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REPORTED_LOCK_FIELD_NUMBER: _ClassVar[int]
    id: str
    failures: int
    throttled: int
    unaudited: int
    first_time: _timestamp_pb2.Timestamp
    last_time: _timestamp_pb2.Timestamp
    locked_until: _timestamp_pb2.Timestamp
    sources: _containers.RepeatedScalarFieldContainer[str]
    reported_lock: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., failures: _Optional[int] = ..., throttled: _Optional[int] = ..., unaudited: _Optional[int] = ..., first_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., locked_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sources: _Optional[_Iterable[str]] = ..., reported_lock: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
