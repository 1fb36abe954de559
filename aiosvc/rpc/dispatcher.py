"""Turn a decoded request into a call of the manager's method, or a precise error.

Checks, in order: the namespace and API version (``UnsupportedVersion``), the method
(``NoSuchMethod``: unknown, private, a hook or a periodic task), then the arguments
against the method's type hints with pydantic (``InvalidArguments`` naming each bad
field). The handler runs only when all pass. Sync methods run in a worker thread.

Nova: ``oslo_messaging.rpc.dispatcher.RPCDispatcher`` with the default access policy.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import pydantic

from ..context import Context
from ..exceptions import InvalidArguments, NoSuchMethod, UnsupportedVersion
from ..manager import Manager
from ..tasks import cancel_requested
from .protocol import Request, brief, dumps, version_is_compatible

__all__ = ["Dispatcher"]

_CTX_NAMES = ("ctx", "context")


@dataclass(frozen=True, slots=True)
class _Endpoint:
    func: Callable[..., Any]
    is_async: bool
    takes_ctx: bool
    args_model: type[pydantic.BaseModel]
    fields: dict[str, str]  # argument name -> field name in args_model
    var_kwargs: bool
    # Names a caller must not give even to a **kwargs method: its self and ctx parameters.
    reserved: frozenset[str]


class Dispatcher:
    """Dispatches requests to one manager's RPC methods.

    Args:
        manager: the endpoint object.
        version: the API version it implements (``RPC_API_VERSION``).
        namespace: requests must name this namespace (``None``: the default one).

    Raises:
        TypeError: a method's signature cannot be turned into an argument model.
    """

    def __init__(self, manager: Manager, version: str | None = None, namespace: str | None = None):
        self.manager = manager
        self.version = version or manager.RPC_API_VERSION
        self.namespace = namespace if namespace is not None else manager.RPC_NAMESPACE
        self.endpoints: dict[str, _Endpoint] = {
            name: _build_endpoint(manager, name, func)
            for name, func in type(manager).rpc_methods().items()
        }

    async def dispatch(self, request: Request) -> Any:
        """Run the requested method and return its result.

        Raises:
            UnsupportedVersion, NoSuchMethod, InvalidArguments: the request does not fit.
            Exception: whatever the method raised.
        """
        # The caller's values are quoted with brief(): a message sized like its request
        # would be logged and sent back whole.
        method = brief(request.method)
        if request.namespace != self.namespace:
            raise UnsupportedVersion(
                f"{method}: no endpoint for namespace {brief(request.namespace)} "
                f"(this service serves {self.namespace!r})"
            )
        if not version_is_compatible(self.version, request.version):
            raise UnsupportedVersion(
                f"{method}: requested API version {request.version}, "
                f"this service implements {self.version}"
            )
        endpoint = self.endpoints.get(request.method)
        if endpoint is None:
            raise NoSuchMethod(f"{type(self.manager).__name__} has no RPC method {method}")
        kwargs = self.validate(request.method, endpoint, request.args)
        args = (request.context,) if endpoint.takes_ctx else ()
        try:
            if endpoint.is_async:
                return await endpoint.func(*args, **kwargs)
            return await anyio.to_thread.run_sync(lambda: endpoint.func(*args, **kwargs))
        except anyio.get_cancelled_exc_class() as exc:
            if cancel_requested():
                raise
            # The method raised CancelledError itself (it awaited a future someone else
            # cancelled). Passed on as is, it would end the server's task group: every
            # later message would go unanswered, with nothing logged. It is a failure.
            raise RuntimeError(
                f"{request.method}() raised CancelledError without being cancelled"
            ) from exc

    @staticmethod
    def validate(method: str, endpoint: _Endpoint, args: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for the method, validated and converted.

        Raises:
            InvalidArguments: missing, unknown or ill-typed arguments, each named.
        """
        try:
            # Validating the JSON form (not the decoded dict) lets pydantic read bytes
            # from base64 and datetimes from ISO strings exactly as they were sent.
            model = endpoint.args_model.model_validate_json(dumps(args))
        except pydantic.ValidationError as exc:
            raise InvalidArguments(f"{method}(): {_describe(exc)}") from None
        except TypeError as exc:  # a value with no JSON form (from an in-process caller)
            raise InvalidArguments(f"{method}(): {exc}") from None
        kwargs = {name: getattr(model, field) for name, field in endpoint.fields.items()}
        if endpoint.var_kwargs and model.model_extra:
            # Given to **kwargs, "self" or "ctx" would be a second value for that
            # parameter: a TypeError from the call, as if the method had failed.
            clash = sorted(endpoint.reserved.intersection(model.model_extra))
            if clash:
                raise InvalidArguments(
                    f"{method}(): " + "; ".join(f"{name}: unexpected argument" for name in clash)
                )
            kwargs.update(model.model_extra)
        return kwargs


def _build_endpoint(manager: Manager, name: str, func: Callable[..., Any]) -> _Endpoint:
    bound = getattr(manager, func.__name__)  # the wire name may differ (an aiosvc endpoint)
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot read the type hints of {func.__qualname__}: {exc}") from exc
    params = list(signature.parameters.values())
    reserved = {params[0].name} if params else set()  # self
    params = params[1:]
    takes_ctx = bool(params) and (
        params[0].name in _CTX_NAMES or hints.get(params[0].name) is Context
    )
    if takes_ctx:
        reserved.add(params[0].name)
        params = params[1:]
    fields: dict[str, Any] = {}
    var_kwargs = False
    for param in params:
        if param.kind is param.VAR_KEYWORD:
            var_kwargs = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            raise TypeError(
                f"RPC method {func.__qualname__} cannot take positional-only or *args "
                f"parameters: arguments travel by name"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        # The model's fields are p0, p1, ... aliased to the argument names, so arguments
        # named like BaseModel members (json, copy, schema, model_config) work as any other.
        fields[param.name] = (annotation, pydantic.Field(default, alias=param.name))
    config = pydantic.ConfigDict(
        extra="allow" if var_kwargs else "forbid",
        arbitrary_types_allowed=True,
        val_json_bytes="base64",
    )
    names = {arg: f"p{i}" for i, arg in enumerate(fields)}
    model = pydantic.create_model(
        f"{type(manager).__name__}.{name}.args",
        __config__=config,
        **{names[arg]: spec for arg, spec in fields.items()},
    )
    return _Endpoint(
        func=bound,
        is_async=inspect.iscoroutinefunction(func),
        takes_ctx=takes_ctx,
        args_model=model,
        fields=names,
        var_kwargs=var_kwargs,
        reserved=frozenset(reserved),
    )


_MAX_PROBLEMS = 10


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    errors = exc.errors(include_url=False)
    for err in errors[:_MAX_PROBLEMS]:
        field = ".".join(str(p) for p in err["loc"]) or "arguments"
        if len(field) > 80:  # an unexpected argument's name is the caller's to choose
            field = brief(field)
        if err["type"] == "missing":
            problems.append(f"{field}: missing required argument")
        elif err["type"] == "extra_forbidden":
            problems.append(f"{field}: unexpected argument")
        else:
            problems.append(f"{field}: {err['msg']} (got {brief(err.get('input'))})")
    if len(errors) > _MAX_PROBLEMS:
        problems.append(f"and {len(errors) - _MAX_PROBLEMS} more")
    return "; ".join(problems)
