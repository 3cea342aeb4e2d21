"""Namespaced storage of protobuf messages on SQLite, PostgreSQL or MongoDB.

>>> storage = await Storage.connect("sqlite:///var/nexus.db")
>>> orders = storage.namespace("plugins/business/orders").repository(orders_pb2.Order)
>>> order = await orders.create(orders_pb2.Order(customer_id="c1"))
>>> page = await orders.list(filter={"customer_id": "c1"}, order_by="create_time desc")

Each message is stored serialized (the source of truth) next to an index document of
its scalar fields, which filters and orderings use; the database indexes a contract
declares (``option (nexus.options.v1.storage)``) are built by ``Storage.apply_indexes``.
Lists page by keyset, with opaque page tokens. ``Namespace.transaction()`` groups
operations into one transaction. MongoDB URLs (``mongodb://host:port/db``) need
PyMongo; see :mod:`.mongo`.
"""

from .errors import InvalidQueryError
from .faults import StorageFailure, StorageHealth, StorageUnavailableError
from .files import make_private_dir
from .index import IndexValue, index_document
from .namespace import Namespace, UnitOfWork, validate_namespace
from .query import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .repository import Page, Record, Repository
from .schema import RECORDS_TABLE
from .storage import Storage

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "RECORDS_TABLE",
    "IndexValue",
    "InvalidQueryError",
    "Namespace",
    "Page",
    "Record",
    "Repository",
    "Storage",
    "StorageFailure",
    "StorageHealth",
    "StorageUnavailableError",
    "UnitOfWork",
    "index_document",
    "make_private_dir",
    "validate_namespace",
]
