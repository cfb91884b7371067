"""Structured output (`response_format`, tool calls) composed with the gate: see spec.py."""

from ingate.structure.spec import (
    TOOL_MARKER,
    Structure,
    StructureError,
    Tool,
    from_response_format,
    from_tools,
    parse_call,
)

__all__ = ["TOOL_MARKER", "Structure", "StructureError", "Tool", "from_response_format", "from_tools", "parse_call"]
