"""A Cloud Storage server on 127.0.0.1 for tests/test_cloud.py: gcp-storage-emulator (the JSON API: uploads
simple, multipart and resumable, downloads with ranges, listings, copies, batch deletes), completed with the two
things of the real service that TensorStore's GCS driver (Orbax's arrays) relies on and the emulator lacks:

* every download names the object's generation (``x-goog-generation``, ``x-goog-metageneration``);
* the preconditions ``ifGenerationMatch`` (0: the object must not exist) and ``ifGenerationNotMatch`` on uploads,
  downloads and deletes, answered 412 Precondition Failed, or 304 Not Modified for a download whose generation
  the client already holds. OCDBT, Orbax's checkpoint format, commits its manifest by such conditional writes.

Usage: python tests/gcs_server.py PORT BUCKET (in memory; stops on SIGTERM).
"""

import functools
import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(request, storage, name):
    """The object's current generation as a string, "0" when there is none."""
    try:
        return str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except NotFound:
        return "0"


def _failed(request, storage, name, response) -> bool:
    """Answers the request's preconditions; True when the handler must not run."""
    match, not_match = (request.query.get(k, [None])[0] for k in ("ifGenerationMatch", "ifGenerationNotMatch"))
    if match is None and not_match is None:
        return False
    current = _generation(request, storage, name)
    if match is not None and match != current:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return True
    if not_match is not None and not_match == current:
        reading = request.method == "GET"
        response.status = HTTPStatus.NOT_MODIFIED if reading else HTTPStatus.PRECONDITION_FAILED
        return True
    return False


def _object_name(request):
    name = request.params.get("object_id")
    if name is None and request.query.get("name"):
        name = request.query["name"][0]
    return name


def _conditional(handler):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        name = _object_name(request)
        if name is not None and _failed(request, storage, name, response):
            return None
        out = handler(request, response, storage, *args, **kwargs)
        if name is not None and request.method == "GET" and response.status == HTTPStatus.OK:
            try:
                obj = storage.get_file_obj(request.params["bucket_name"], name)
            except NotFound:
                return out
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return out

    return wrapped


_PATCHED = {objects.get, objects.download, objects.delete, objects.insert}
for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
        if handler in _PATCHED:
            handlers[method] = _conditional(handler)
objects.insert = _conditional(objects.insert)  # the router's fallback for uploads posted without /upload
server.RequestHandler.log_message = lambda *args: None  # one line per request otherwise
server.server.HTTPServer.handle_error = lambda *args: None  # clients that close early: nothing to report (own process)

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    srv.run()
