"""The OpenAPI 3 document of the REST API and DICOMweb, served at the stable URL /api/openapi.json.

Built from the app's routes (web/routing.py): each route's path, method, summary and
permission, so the document lists what the server answers and cannot drift from it.
The UI pages and the redirects are not API and are left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from starlette.routing import BaseRoute

from minipacs import __version__
from minipacs.web.routing import Endpoint, declared

#: the paths that are API: REST, DICOMweb, and WADO-URI at the root
API_PATHS: Final = re.compile(r"^(/api/|/dicom-web/|/wado$)")
_PARAMETER: Final = re.compile(r"\{([^}]+)\}")


def document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, route in declared(routes):
        if not isinstance(route, Endpoint) or not API_PATHS.match(path):
            continue
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAMETER.findall(path)
        ]
        paths.setdefault(path, {})[route.method.lower()] = {
            "summary": route.summary,
            "parameters": params,
            "x-minipacs-permission": route.permission,
            "responses": {
                "200": {"description": "OK"},
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "minipacs REST API and DICOMweb", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                }
            },
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "token": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"basic": []}, {"token": []}],
    }


__all__ = ["API_PATHS", "document"]
