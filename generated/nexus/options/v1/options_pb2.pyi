import datetime

from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_OWN: _ClassVar[Scope]
    SCOPE_TEAM: _ClassVar[Scope]
    SCOPE_ALL: _ClassVar[Scope]
SCOPE_UNSPECIFIED: Scope
SCOPE_OWN: Scope
SCOPE_TEAM: Scope
SCOPE_ALL: Scope
STORAGE_FIELD_NUMBER: _ClassVar[int]
storage: _descriptor.FieldDescriptor
RULES_FIELD_NUMBER: _ClassVar[int]
rules: _descriptor.FieldDescriptor
POLICY_FIELD_NUMBER: _ClassVar[int]
policy: _descriptor.FieldDescriptor
DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
default_policy: _descriptor.FieldDescriptor

class MethodPolicy(_message.Message):
    __slots__ = ("public", "authenticated", "permission", "rate_limit_class", "default_deadline", "idempotent")
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    public: bool
    authenticated: bool
    permission: Permission
    rate_limit_class: str
    default_deadline: _duration_pb2.Duration
    idempotent: bool
    def __init__(self, public: _Optional[bool] = ..., authenticated: _Optional[bool] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ..., rate_limit_class: _Optional[str] = ..., default_deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idempotent: _Optional[bool] = ...) -> None: ...

class Permission(_message.Message):
    __slots__ = ("resource", "action", "scope")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    action: str
    scope: Scope
    def __init__(self, resource: _Optional[str] = ..., action: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ...) -> None: ...

class FieldRules(_message.Message):
    __slots__ = ("required", "min_len", "max_len", "pattern", "min", "max", "min_items", "max_items", "defined_only")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MIN_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEFINED_ONLY_FIELD_NUMBER: _ClassVar[int]
    required: bool
    min_len: int
    max_len: int
    pattern: str
    min: int
    max: int
    min_items: int
    max_items: int
    defined_only: bool
    def __init__(self, required: _Optional[bool] = ..., min_len: _Optional[int] = ..., max_len: _Optional[int] = ..., pattern: _Optional[str] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., min_items: _Optional[int] = ..., max_items: _Optional[int] = ..., defined_only: _Optional[bool] = ...) -> None: ...

class StorageOptions(_message.Message):
    __slots__ = ("indexes",)
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[StorageIndex]
    def __init__(self, indexes: _Optional[_Iterable[_Union[StorageIndex, _Mapping]]] = ...) -> None: ...

class StorageIndex(_message.Message):
    __slots__ = ("fields", "collections")
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ..., collections: _Optional[_Iterable[str]] = ...) -> None: ...
