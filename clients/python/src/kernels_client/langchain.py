"""``GovernedTool``: a langchain-core tool that runs only after an ALLOW.

Wraps any ``BaseTool`` under the same name, description and argument schema,
so an agent sees the tool it knew. Each call is submitted to the kernel
first (the parsed arguments are the tool call's params); only an accepted
ALLOW invokes the wrapped tool, and its outcome is then recorded. A DENY
raises :class:`~kernels_client.errors.KernelDenied` (not a ``ToolException``,
so no ``handle_tool_error`` setting can turn a refusal into a tool answer), a
halted or unreachable kernel raises too; the wrapped tool never runs then.

Needs the ``langchain`` extra: ``pip install "kernels-client[langchain]"``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from langchain_core.tools import BaseTool
from pydantic import ConfigDict

from .aio import AsyncKernelsClient
from .client import KernelsClient
from .governed import build_request, require_allow, run_and_record_async, run_and_record_sync


class GovernedTool(BaseTool):
    """A langchain-core tool governed by a kernels service.

    ``GovernedTool(tool, client, actor="agent-001")``; ``kernel_tool`` is the
    tool name the kernel's policy knows (default: the wrapped tool's name).
    With a :class:`KernelsClient` it runs synchronously (``invoke``; ``ainvoke``
    runs it in an executor); with an :class:`AsyncKernelsClient` it runs only
    through ``ainvoke``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool: BaseTool
    client: Any
    actor: str
    kernel_tool: str
    intent: Optional[str] = None
    evidence: Optional[str] = None
    permit: Optional[dict[str, Any]] = None

    def __init__(
        self,
        tool: BaseTool,
        client: Union[KernelsClient, AsyncKernelsClient],
        *,
        actor: str,
        kernel_tool: Optional[str] = None,
        intent: Optional[str] = None,
        evidence: Optional[str] = None,
        permit: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(client, (KernelsClient, AsyncKernelsClient)):
            raise TypeError("client must be a KernelsClient or an AsyncKernelsClient")
        super().__init__(
            name=kwargs.pop("name", tool.name),
            description=kwargs.pop("description", tool.description),
            args_schema=kwargs.pop("args_schema", tool.args_schema),
            tool=tool,
            client=client,
            actor=actor,
            kernel_tool=kernel_tool or tool.name,
            intent=intent,
            evidence=evidence,
            permit=permit,
            **kwargs,
        )

    def _input_and_params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """What to pass the wrapped tool, and the params the kernel judges."""
        if kwargs:
            return dict(kwargs), dict(kwargs)
        if len(args) == 1:
            # A plain string input: named by the schema's only field, if it has one.
            fields = list(self.args)
            return args[0], {fields[0] if len(fields) == 1 else "input": args[0]}
        return {}, {}

    def _request(self, params: dict[str, Any]) -> Any:
        return build_request(
            actor=self.actor,
            tool=self.kernel_tool,
            params=params,
            intent=self.intent or f"LangChain tool {self.name}",
            evidence=self.evidence,
            permit=self.permit,
        )

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self.client, KernelsClient):
            raise TypeError("this GovernedTool has an AsyncKernelsClient: call it with ainvoke")
        tool_input, params = self._input_and_params(args, kwargs)
        receipt = self.client.submit(self._request(params))
        require_allow(receipt, self.kernel_tool)
        return run_and_record_sync(self.client, receipt, lambda: self.tool.invoke(tool_input))

    async def _arun(self, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self.client, AsyncKernelsClient):
            return await super()._arun(*args, **kwargs)
        client = self.client
        tool_input, params = self._input_and_params(args, kwargs)
        receipt = await client.submit(self._request(params))
        require_allow(receipt, self.kernel_tool)
        return await run_and_record_async(client, receipt, lambda: self.tool.ainvoke(tool_input))


__all__ = ["GovernedTool"]
