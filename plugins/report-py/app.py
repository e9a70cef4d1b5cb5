"""`csv_to_json` turns a CSV export into typed records with a per-column summary;
`fetch_json` reads a JSON API on a granted host, with a secret the plugin never sees.

Written with warden's Python SDK: the schemas agents see come from the type hints.
"""

import csv
import io
from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, List, Optional

from warden_sdk import ToolError, WitWorld, log, secret_placeholder, tool  # noqa: F401 (WitWorld is the export)
from warden_sdk import http


@dataclass
class Column:
    """What one column holds.

    Args:
        name: The header.
        kind: "number" when every non-empty cell parses as one, else "text".
        empty: Cells with nothing in them.
    """

    name: str
    kind: str
    empty: int
    min: Optional[float] = None
    max: Optional[float] = None
    sum: Optional[float] = None


@dataclass
class Table:
    columns: List[Column]
    rows: List[Dict[str, Any]]
    row_count: int
    truncated: bool = False


def _number(cell: str) -> Optional[float]:
    try:
        return float(cell.replace(",", "")) if cell.strip() else None
    except ValueError:
        return None


@tool(title="CSV to JSON", read_only=True, idempotent=True)
def csv_to_json(
    text: Annotated[str, {"maxLength": 1048576}],
    delimiter: Annotated[str, {"minLength": 1, "maxLength": 1}] = ",",
    max_rows: Annotated[int, {"minimum": 1, "maximum": 100000}] = 10000,
) -> Table:
    """Parse a CSV document (first line: the headers) into records, numbers as numbers,
    with each column's kind, empty cells and numeric range.

    Args:
        text: The CSV document.
        delimiter: The field separator.
        max_rows: Stop after this many records (the result says it was truncated).
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        headers = next(reader)
    except StopIteration:
        raise ToolError("invalid-input", "the CSV is empty: no header line")
    except csv.Error as e:
        raise ToolError("invalid-input", f"line 1: {e}")
    if len(set(headers)) != len(headers):
        raise ToolError("invalid-input", "line 1: two columns have the same header")
    raw: List[List[str]] = []
    truncated = False
    try:
        for line in reader:
            if len(raw) >= max_rows:
                truncated = True
                break
            if len(line) != len(headers):
                raise ToolError("invalid-input", f"line {reader.line_num}: {len(line)} fields, the header has {len(headers)}")
            raw.append(line)
    except csv.Error as e:
        raise ToolError("invalid-input", f"line {reader.line_num}: {e}")

    columns = []
    for i, name in enumerate(headers):
        cells = [r[i] for r in raw]
        numbers = [_number(c) for c in cells if c.strip()]
        numeric = bool(numbers) and all(n is not None for n in numbers)
        column = Column(name=name, kind="number" if numeric else "text", empty=sum(1 for c in cells if not c.strip()))
        if numeric:
            column.min, column.max, column.sum = min(numbers), max(numbers), sum(numbers)
        columns.append(column)
    rows = [
        {c.name: (_number(cell) if c.kind == "number" else cell) for c, cell in zip(columns, line)}
        for line in raw
    ]
    log("info", "parsed a CSV", rows=len(rows), columns=len(columns))
    return Table(columns=columns, rows=rows, row_count=len(rows), truncated=truncated)


@dataclass
class Fetched:
    status: int
    content_type: Optional[str]
    body: Any


@tool(title="Fetch JSON", read_only=True, open_world=True)
def fetch_json(url: Annotated[str, {"pattern": "^https?://", "maxLength": 2048}], token_secret: Optional[str] = None) -> Fetched:
    """GET a JSON document from a host the operator granted, optionally authenticated
    with a granted secret (sent as a bearer token; the plugin never sees its value).

    Args:
        url: The address to fetch.
        token_secret: The name of a granted secret to send as `Authorization: Bearer`.
    """
    headers = {"accept": "application/json"}
    if token_secret:
        headers["authorization"] = f"Bearer {secret_placeholder(token_secret)}"
    response = http.get(url, headers, max_body=256 * 1024)
    try:
        body = response.json()
    except ValueError:
        body = response.text()
    return Fetched(status=response.status, content_type=response.header("content-type"), body=body)
