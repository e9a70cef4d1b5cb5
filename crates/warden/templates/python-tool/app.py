"""`{{snake}}`: a warden tool in Python. Its input schema comes from the parameters'
type hints, its output schema from the return type, its description from the
docstring: change a hint and the schema agents see changes with it."""

from dataclasses import dataclass
from typing import Annotated

from warden_sdk import ToolError, WitWorld, tool  # noqa: F401 (WitWorld is the component's export)


@dataclass
class Greeting:
    greeting: str


@tool(read_only=True, idempotent=True)
def {{snake}}(name: Annotated[str, {"minLength": 1, "maxLength": 100}], times: Annotated[int, {"minimum": 1, "maximum": 10}] = 1) -> Greeting:
    """Greet someone (replace this with what your tool does: agents read this text).

    Args:
        name: Who to greet.
        times: How many times.
    """
    if not name.strip():
        raise ToolError("invalid-input", "the name is blank")
    return Greeting(greeting=" ".join([f"Hello, {name}!"] * times))
