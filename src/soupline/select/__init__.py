"""Selection methods. Each import below registers one method; adding one = a module + a line."""

from soupline.select import dealrec, dnc, gotd, kmeans, random  # noqa: F401  (registration)
from soupline.select.base import (  # noqa: F401
    REGISTRY,
    MethodConfig,
    Selection,
    SelectionInput,
    data_columns,
    method_config,
    register,
    run_method,
)
from soupline.select.quotas import resolve_budget  # noqa: F401
