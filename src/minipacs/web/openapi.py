"""The OpenAPI 3 document of the REST API and DICOMweb, served at the stable URL /api/openapi.json."""

from __future__ import annotations

from typing import Any, Final

from minipacs import __version__

# (path, method, summary, permission)
OPERATIONS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("/api/{level}", "get", "List patients, studies, series or instances (limit, offset, matching keys)", "read"),
    ("/api/{level}/{id}", "get", "Main tags of one resource", "read"),
    ("/api/{level}/{id}", "delete", "Delete a resource and everything below it", "write"),
    ("/api/instances/{id}/tags", "get", "All tags of an instance as PS3.18 JSON", "read"),
    ("/api/instances/{id}/file", "get", "Download an instance (Part 10)", "read"),
    ("/api/{level}/{id}/archive", "get", "Download a patient, study or series as a ZIP (streamed)", "read"),
    ("/api/instances", "post", "Upload DICOM files: one file, a ZIP, or multipart; per-file result", "write"),
    ("/api/search", "get", "Search with C-FIND matching rules (level, keys, wildcards, ranges, limit/offset)", "read"),
    ("/api/associations", "get", "The association log: who, from where, what was negotiated and done, "
     "tls, tls_peer, user_identity", "read"),
    ("/api/stats", "get", "Counts, disk use, ingest counters", "read"),
    ("/api/changes", "get", "The changes journal after ?since=N (seq), at most ?limit=M (default 100, max 1000): "
     "{changes: [{seq, type, level, uid, study, time}], last, done}", "read"),
    ("/api/nodes", "get", "List DICOM nodes", "read"),
    ("/api/nodes", "post", "Add or update a DICOM node", "admin"),
    ("/api/nodes/{ae_title}", "delete", "Remove a DICOM node (?host= to pick one)", "admin"),
    ("/api/nodes/{id}", "put", "Edit a DICOM node (by id, or an AE title only one node has)", "admin"),
    ("/api/nodes/{id}/echo", "post", "C-ECHO a node: {ok, status, message, ms}", "write"),
    ("/api/nodes/{id}/query", "post", "C-FIND a node: {level, keys, limit} -> matches as PS3.18 JSON", "write"),
    ("/api/nodes/{id}/retrieve", "post", "C-MOVE to us or C-GET from a node: {level, uids, method, study "
     "(series level: their study)} -> a job", "write"),
    ("/api/send", "post", "C-STORE stored instances to a node: {node, level, uids} -> a job", "write"),
    ("/api/jobs", "get", "Send and retrieve jobs, newest first", "read"),
    ("/api/jobs/{id}", "get", "One job: state, total, done, failed, message (retrieve jobs also completed, warning)", "read"),
    ("/api/worklist", "get", "Modality worklist entries (?open=1: open ones only)", "read"),
    ("/api/worklist", "post", "Add a worklist entry (PS3.18 JSON dataset)", "write"),
    ("/api/worklist/{id}", "get", "One worklist entry", "read"),
    ("/api/worklist/{id}", "delete", "Remove a worklist entry", "write"),
    ("/dicom-web/studies", "get", "QIDO-RS: search for studies", "read"),
    ("/dicom-web/studies", "post", "STOW-RS: store instances", "write"),
    ("/dicom-web/series", "get", "QIDO-RS: search for series", "read"),
    ("/dicom-web/instances", "get", "QIDO-RS: search for instances", "read"),
    ("/dicom-web/studies/{study}", "get", "WADO-RS: retrieve a study (multipart/related)", "read"),
    ("/dicom-web/studies/{study}/metadata", "get", "WADO-RS: study metadata (PS3.18 JSON)", "read"),
    ("/dicom-web/studies/{study}/series/{series}", "get", "WADO-RS: retrieve a series", "read"),
    ("/dicom-web/studies/{study}/series/{series}/instances/{instance}", "get", "WADO-RS: retrieve an instance",
     "read"),
    ("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", "get",
     "WADO-RS: frames (uncompressed)", "read"),
    ("/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered", "get",
     "WADO-RS: rendered JPEG/PNG (window=center,width)", "read"),
    ("/dicom-web/wado", "get", "WADO-URI (requestType=WADO)", "read"),
)


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, method, summary, permission in OPERATIONS:
        params = [{"name": name.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in path.split("/") if name.startswith("{")]
        paths.setdefault(path, {})[method] = {
            "summary": summary, "parameters": params, "x-minipacs-permission": permission,
            "responses": {"200": {"description": "OK"},
                          "default": {"description": "Error", "content": {"application/json": {
                              "schema": {"$ref": "#/components/schemas/Error"}}}}},
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "minipacs REST API and DICOMweb", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}}},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"basic": []}, {"token": []}],
    }


__all__ = ["OPERATIONS", "document"]
