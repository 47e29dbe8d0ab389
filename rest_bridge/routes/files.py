"""OpenAI's Files API, for the Batch API: POST /v1/files (multipart, purpose "batch"),
GET /v1/files, GET /v1/files/{id}, GET /v1/files/{id}/content, DELETE /v1/files/{id}."""
from __future__ import annotations

import asyncio
import time

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rest_bridge.batches.objects import file_object
from rest_bridge.errors import APIError
from rest_bridge.routes.common import app_store, stored
from rest_bridge.routes.listing import list_page, page_query

# A batch's input file at most (OpenAI takes 200 MB; the whole file is kept and read at once).
MAX_FILE_BYTES = 64 * 1024 * 1024
# Room for the multipart framing and the purpose field around the file.
_FORM_OVERHEAD_BYTES = 64 * 1024
UPLOAD_PURPOSES = ("batch",)


def _too_large() -> APIError:
    return APIError(
        413, f"The file is larger than {MAX_FILE_BYTES} bytes, the most a batch's input file may be.", param="file"
    )


async def _upload(request: Request) -> tuple[str, bytes, str]:
    """(file name, content, purpose) of a multipart upload; a 400 naming what is missing or wrong."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "Upload files as multipart/form-data, with the fields 'file' and 'purpose'.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FILE_BYTES + _FORM_OVERHEAD_BYTES:
        raise _too_large()
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "Missing required parameter: 'file'.", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise APIError(400, "Missing required parameter: 'purpose'.", param="purpose")
        content = await upload.read(MAX_FILE_BYTES + 1)
        filename = upload.filename or "upload.jsonl"
    if len(content) > MAX_FILE_BYTES:
        raise _too_large()
    return filename, content, purpose


async def create_file(request: Request) -> Response:
    filename, content, purpose = await _upload(request)
    if purpose not in UPLOAD_PURPOSES:
        raise APIError(
            400,
            f"Files with purpose {purpose!r} are not supported; upload Batch API input with purpose 'batch'.",
            param="purpose",
        )
    if not filename.endswith(".jsonl"):
        raise APIError(400, "Invalid file format for the Batch API: the file must be .jsonl.", param="file")
    file = file_object(filename, len(content), purpose, int(time.time()))
    await asyncio.to_thread(app_store(request).add_file, file, content)
    return JSONResponse(file)


def not_found(file_id: str) -> APIError:
    return APIError(404, f"No such File object: {file_id}", param="file_id")


async def list_files(request: Request) -> Response:
    query = page_query(request, default_limit=10_000, max_limit=10_000)
    purpose = request.query_params.get("purpose") or None
    page = await asyncio.to_thread(app_store(request).list_files, purpose, query.after, query.limit, query.order)
    return JSONResponse(list_page(page))


async def retrieve_file(request: Request) -> Response:
    return JSONResponse(await stored(request, "file_id", app_store(request).get_file, not_found))


async def file_content(request: Request) -> Response:
    content = await stored(request, "file_id", app_store(request).file_content, not_found)
    return Response(content, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    if not await asyncio.to_thread(app_store(request).delete_file, file_id):
        raise not_found(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
