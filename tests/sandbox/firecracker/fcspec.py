"""Firecracker's own OpenAPI (Swagger 2.0) spec as a request validator — used by the tests and by the stand-in
Firecracker API server alike, so both judge a request by the same rules.

Rules, all taken from the spec (and from Firecracker's server behaviour where the spec states it in prose):
* the path (with `{param}` templates) and method must exist;
* a body parameter marked `required` must be present, and no body may be sent where the spec takes none;
* the body must validate against the referenced schema (`$ref`s resolved into `definitions`; JSON Schema draft 4,
  where `integer` does not accept 0.5 or 2.0);
* objects are closed: Firecracker deserialises with serde's `deny_unknown_fields`, so an object schema that does not
  say `additionalProperties` is treated as `additionalProperties: false`;
* a path parameter repeated in the body must be equal (Firecracker: "The id from the path does not match the id
  from the body!");
* prose constraints: a virtio-block drive (no `socket`) needs `path_on_host` and `is_read_only`; with SMT on,
  `vcpu_count` must be 1 or even.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def spec_path() -> Path:
    """Where Firecracker's spec is: $HEARTH_FIRECRACKER_SPEC, or shared/ beside the repository, or /work/shared."""
    candidates = [
        os.environ.get("HEARTH_FIRECRACKER_SPEC", ""),
        str(REPO.parent / "shared" / "firecracker" / "firecracker.yaml"),
        "/work/shared/firecracker/firecracker.yaml",
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError(
        "Firecracker's OpenAPI spec (firecracker.yaml) not found; set HEARTH_FIRECRACKER_SPEC to its path "
        f"(looked in: {', '.join(c for c in candidates if c)})"
    )


class SpecViolation(Exception):
    """A request the real Firecracker would refuse (or not route)."""


@dataclass(frozen=True)
class Route:
    template: str
    regex: re.Pattern[str]
    names: tuple[str, ...]
    operations: dict[str, dict[str, Any]]


def _close_objects(node: Any) -> Any:
    """Every object schema without `additionalProperties` becomes closed (serde `deny_unknown_fields`)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)
    return node


class FirecrackerSpec:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or spec_path()
        doc = yaml.safe_load(self.path.read_text())
        assert doc.get("swagger") == "2.0", "expected Firecracker's Swagger 2.0 document"
        self.version: str = str(doc["info"]["version"])
        self.definitions: dict[str, Any] = _close_objects(copy.deepcopy(doc["definitions"]))
        self.routes: list[Route] = []
        for template, ops in doc["paths"].items():
            names = tuple(re.findall(r"{(\w+)}", template))
            pattern = "^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            operations = {m.upper(): op for m, op in ops.items() if isinstance(op, dict)}
            self.routes.append(Route(template, re.compile(pattern), names, operations))

    def route(self, method: str, path: str) -> tuple[Route, dict[str, Any], dict[str, str]]:
        for r in self.routes:
            m = r.regex.match(path)
            if m:
                if method.upper() not in r.operations:
                    raise SpecViolation(f"{method} {path}: the spec has no {method} on {r.template}")
                return r, r.operations[method.upper()], m.groupdict()
        raise SpecViolation(f"{method} {path}: no such path in Firecracker's API")

    def body_schema(self, method: str, path: str) -> tuple[dict[str, Any] | None, bool]:
        """(schema, required) of the operation's body parameter; (None, False) when it takes no body."""
        _, op, _ = self.route(method, path)
        for param in op.get("parameters", []):
            if param.get("in") == "body":
                return param["schema"], bool(param.get("required", False))
        return None, False

    def errors(self, method: str, path: str, body: Any) -> list[str]:
        """Every reason Firecracker would refuse this request (empty: valid)."""
        try:
            _, _, params = self.route(method, path)
        except SpecViolation as exc:
            return [str(exc)]
        schema, required = self.body_schema(method, path)
        if schema is None:
            return [] if body is None else [f"{method} {path} takes no body"]
        if body is None:
            return [f"{method} {path}: the body is required"] if required else []
        validator = Draft4Validator({"definitions": self.definitions, **schema})
        out = []
        for err in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in err.absolute_path) or "(body)"
            out.append(f"{method} {path}: {where}: {err.message}")
        if isinstance(body, dict):
            for name, value in params.items():
                if name in body and body[name] != value:
                    out.append(
                        f"{method} {path}: the id from the path ({value!r}) does not match the id from the body "
                        f"({body[name]!r})"
                    )
            ref = schema.get("$ref", "")
            if ref == "#/definitions/Drive" and "socket" not in body:
                out += [
                    f"{method} {path}: a virtio-block drive needs {f}"
                    for f in ("path_on_host", "is_read_only")
                    if f not in body
                ]
            if ref == "#/definitions/MachineConfiguration" and body.get("smt") is True:
                n = body.get("vcpu_count")
                if isinstance(n, int) and n > 1 and n % 2:
                    out.append(f"{method} {path}: with smt the vcpu_count must be 1 or even, got {n}")
        return out

    def check(self, method: str, path: str, body: Any) -> None:
        errors = self.errors(method, path, body)
        if errors:
            raise SpecViolation("; ".join(errors))
