"""``governed``: run a Python callable only after the kernel ALLOWs it.

Each call of a governed function becomes one kernel request (its arguments
are the tool call's params, bound by name), with a fresh request id. Only an
accepted ALLOW runs the function; any other answer raises
(:class:`KernelDenied`, :class:`KernelHalted`, :class:`KernelsError`) and the
function body never runs. After it ran, its outcome is recorded
(``POST /v1/outcomes``: ok or the error text, and the SHA-256 of the result).
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union

from .aio import AsyncKernelsClient
from .canonical import result_sha256
from .client import KernelsClient
from .errors import KernelDenied, KernelsError
from .models import KernelReceipt, KernelRequest, ToolCall

F = TypeVar("F", bound=Callable[..., Any])


class OutcomeNotRecorded(KernelsError):
    """The tool ran (after an ALLOW) but its outcome could not be recorded.

    ``result`` is what the tool returned, ``receipt`` the ALLOW it ran under;
    the cause is chained. The tool is not to be run again for this.
    """

    def __init__(self, message: str, *, result: Any, receipt: KernelReceipt) -> None:
        super().__init__(message)
        self.result = result
        self.receipt = receipt


def call_params(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name (defaults included), as JSON data.

    Raises :class:`KernelsError` before anything is submitted when an
    argument is not JSON data: the kernel cannot judge what it cannot record.
    """
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise KernelsError(f"{getattr(fn, '__name__', fn)}: {e}") from e
    bound.apply_defaults()
    params: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if name in ("self", "cls"):
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            params.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            params[name] = list(value)
        else:
            params[name] = value
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise KernelsError(
            f"the arguments of {getattr(fn, '__name__', fn)} are not JSON data ({e}); nothing was submitted"
        ) from e
    return params


def build_request(
    *,
    actor: str,
    tool: str,
    params: dict[str, Any],
    intent: Optional[str],
    evidence: Optional[str],
    permit: Optional[dict[str, Any]],
) -> KernelRequest:
    """The kernel request of one governed call (with a fresh request id).

    It is marked ``external_tool``: the caller runs the tool, never the
    kernel (which would otherwise run its own built-in of the same name, or
    fail a tool that is not in its ``external_tools``).
    """
    return KernelRequest(
        actor=actor,
        intent=intent or f"call {tool}",
        tool_call=ToolCall(name=tool, params=params),
        params=params or None,
        evidence=evidence,
        permit=permit,
        external_tool=True,
    ).with_request_id()


def require_allow(receipt: KernelReceipt, tool: str) -> None:
    """Raises :class:`KernelDenied` unless the receipt is an accepted ALLOW."""
    if not receipt.allowed:
        raise KernelDenied(
            f"the kernel did not allow {tool!r}: {receipt.decision.value}/{receipt.status.value}"
            + (f": {receipt.error}" if receipt.error else "")
            + f" (evidence {receipt.evidence_hash})",
            receipt=receipt,
        )


def error_text(exc: BaseException) -> str:
    """How a tool's exception is recorded in its outcome."""
    return f"{type(exc).__name__}: {exc}"


def governed(
    client: Union[KernelsClient, AsyncKernelsClient],
    *,
    actor: str,
    tool: Optional[str] = None,
    intent: Optional[str] = None,
    evidence: Optional[str] = None,
    permit: Optional[dict[str, Any]] = None,
) -> Callable[[F], F]:
    """Decorator: the function runs only after the kernel ALLOWs the call.

    ``tool`` is the tool name the policy knows (default: the function's
    name). A plain function needs a :class:`KernelsClient`, a coroutine
    function an :class:`AsyncKernelsClient`.
    """

    def decorate(fn: F) -> F:
        name = tool or fn.__name__
        if inspect.iscoroutinefunction(fn):
            if not isinstance(client, AsyncKernelsClient):
                raise TypeError("a coroutine function is governed with an AsyncKernelsClient")
            return _governed_async(client, fn, name, actor, intent, evidence, permit)  # type: ignore[return-value]
        if not isinstance(client, KernelsClient):
            raise TypeError("a plain function is governed with a KernelsClient")
        return _governed_sync(client, fn, name, actor, intent, evidence, permit)  # type: ignore[return-value]

    return decorate


def _governed_sync(
    client: KernelsClient,
    fn: Callable[..., Any],
    name: str,
    actor: str,
    intent: Optional[str],
    evidence: Optional[str],
    permit: Optional[dict[str, Any]],
) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        params = call_params(fn, args, kwargs)
        request = build_request(actor=actor, tool=name, params=params, intent=intent, evidence=evidence, permit=permit)
        receipt = client.submit(request)
        require_allow(receipt, name)
        return run_and_record_sync(client, receipt, lambda: fn(*args, **kwargs))

    return wrapper


def run_and_record_sync(client: KernelsClient, receipt: KernelReceipt, run: Callable[[], Any]) -> Any:
    """Runs an ALLOWed tool and records its outcome."""
    try:
        result = run()
    except Exception as e:
        try:
            client.record_outcome(receipt.request_id, ok=False, error=error_text(e))
        except KernelsError as record_error:
            _note(e, f"its outcome could not be recorded: {record_error}")
        raise
    try:
        client.record_outcome(receipt.request_id, ok=True, result_sha256=result_sha256(result))
    except KernelsError as e:
        raise OutcomeNotRecorded(
            f"the tool ran under {receipt.request_id} but its outcome was not recorded: {e}",
            result=result,
            receipt=receipt,
        ) from e
    return result


def _governed_async(
    client: AsyncKernelsClient,
    fn: Callable[..., Awaitable[Any]],
    name: str,
    actor: str,
    intent: Optional[str],
    evidence: Optional[str],
    permit: Optional[dict[str, Any]],
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        params = call_params(fn, args, kwargs)
        request = build_request(actor=actor, tool=name, params=params, intent=intent, evidence=evidence, permit=permit)
        receipt = await client.submit(request)
        require_allow(receipt, name)
        return await run_and_record_async(client, receipt, lambda: fn(*args, **kwargs))

    return wrapper


async def run_and_record_async(
    client: AsyncKernelsClient, receipt: KernelReceipt, run: Callable[[], Awaitable[Any]]
) -> Any:
    """Runs an ALLOWed coroutine tool and records its outcome."""
    try:
        result = await run()
    except Exception as e:
        try:
            await client.record_outcome(receipt.request_id, ok=False, error=error_text(e))
        except KernelsError as record_error:
            _note(e, f"its outcome could not be recorded: {record_error}")
        raise
    try:
        await client.record_outcome(receipt.request_id, ok=True, result_sha256=result_sha256(result))
    except KernelsError as e:
        raise OutcomeNotRecorded(
            f"the tool ran under {receipt.request_id} but its outcome was not recorded: {e}",
            result=result,
            receipt=receipt,
        ) from e
    return result


def _note(exc: BaseException, text: str) -> None:
    add_note = getattr(exc, "add_note", None)
    if callable(add_note):
        add_note(text)
