"""The HTTP API of a Collection (FastAPI): ``python -m memret.collection serve PATH``.

Endpoints (JSON; the OpenAPI schema is at ``/openapi.json``, interactive docs at ``/docs``)::

    GET  /                      the search page
    GET  /health                liveness (never needs the key)
    GET  /stats                 counts and settings
    POST /search                {"query", "k", "where", "mode"} -> {"hits": [{"id", "score", "text", "metadata"}]}
    POST /documents             {"documents": [{"id", "text", "metadata", "vector"}]}  add (409 if an id exists)
    PUT  /documents             same body, upsert
    GET  /documents/{id}        one document (404 if missing)
    POST /documents/get         {"ids": [...]}
    POST /documents/delete      {"ids": [...]} -> {"deleted": n}
    DELETE /documents/{id}      delete one (404 if missing)

With an API key set (``--api-key`` or ``$MEMRET_API_KEY``) every endpoint but ``/`` and ``/health``
needs it in ``X-API-Key`` or ``Authorization: Bearer``; without it the answer is 401. Bad input gets
422 (malformed body, a bad filter, wrong vector size) with a message saying what is wrong.
"""

# No `from __future__ import annotations` here: pydantic and FastAPI must see the request models defined
# inside create_app as real objects, not as strings they would look up in module globals.
import hmac
import math
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, Optional

if TYPE_CHECKING:
    from memret.collection.store import Collection

MAX_BATCH = 10_000


def create_app(collection: "Collection", api_key: Optional[str] = None, max_batch: int = MAX_BATCH):
    """A FastAPI app serving ``collection``.

    Args:
        collection: an open :class:`~memret.collection.Collection` (the app does not close it).
        api_key: require this key on every endpoint except ``/`` and ``/health``; None = open.
        max_batch: the most documents or ids one request may carry.

    Raises:
        ImportError: fastapi is not installed (``pip install 'memret[app]'``).
    """
    try:
        from fastapi import Depends, FastAPI, HTTPException, Request
        from fastapi.responses import HTMLResponse, JSONResponse
        from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
        from pydantic import BaseModel, ConfigDict, Field
    except ImportError as e:
        raise ImportError(f"{e.name} is needed for the HTTP API: pip install 'memret[app]'") from None

    from memret.collection.db import StoreBusyError
    from memret.collection.filters import FilterError

    class Doc(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str = Field(min_length=1, max_length=1024)
        text: str = Field(max_length=1_000_000)
        metadata: dict[str, Any] = Field(default_factory=dict)
        vector: Optional[list[float]] = Field(default=None, max_length=65536)

    class Docs(BaseModel):
        model_config = ConfigDict(extra="forbid")
        documents: list[Doc] = Field(min_length=1, max_length=max_batch)

    class Ids(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[str] = Field(min_length=1, max_length=max_batch)

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: str = Field(min_length=1, max_length=100_000)
        k: int = Field(default=10, ge=1, le=1000)
        where: Optional[dict[str, Any]] = None
        mode: Literal["dense", "bm25", "hybrid"] = "hybrid"

    class HitOut(BaseModel):
        id: str
        score: float
        text: str
        metadata: dict[str, Any]

    class SearchResponse(BaseModel):
        hits: list[HitOut]

    class DocOut(BaseModel):
        id: str
        text: str
        metadata: dict[str, Any]

    class Deleted(BaseModel):
        deleted: int

    class Written(BaseModel):
        written: int
        documents: int

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    def authorize(key: Optional[str] = Depends(key_header),
                  cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if api_key is None:
            return
        given = key or (cred.credentials if cred else None)
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="memret collection", version="1", description=__doc__.split("\n\n")[0],
                  responses={401: {"description": "API key missing or wrong"}})
    guarded = [Depends(authorize)]

    def unprocessable(msg: str) -> HTTPException:
        return HTTPException(422, msg)

    def write(body: Docs, upsert: bool) -> Written:
        ids = [d.id for d in body.documents]
        texts = [d.text for d in body.documents]
        metas = [d.metadata for d in body.documents]
        given = [d.vector is not None for d in body.documents]
        if any(given) and not all(given):
            raise unprocessable("give a vector for every document or for none")
        vectors = [d.vector for d in body.documents] if all(given) else None
        if vectors is not None and len({len(v) for v in vectors}) != 1:
            raise unprocessable("all vectors must have the same length")
        try:
            (collection.upsert if upsert else collection.add)(ids, texts, metas, vectors=vectors)
        except KeyError as e:
            raise HTTPException(409, e.args[0]) from None
        return Written(written=len(ids), documents=len(collection))

    @app.exception_handler(FilterError)
    async def _bad_filter(request: Request, exc: FilterError):
        return JSONResponse({"detail": f"bad filter: {exc}"}, status_code=422)

    @app.exception_handler(ValueError)
    async def _bad_value(request: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(TypeError)
    async def _bad_type(request: Request, exc: TypeError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StoreBusyError)
    async def _busy(request: Request, exc: StoreBusyError):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("memret.collection").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/stats", dependencies=guarded)
    def stats() -> dict:
        s = collection.stats()
        s["auth"] = api_key is not None
        return s

    @app.post("/search", dependencies=guarded, response_model=SearchResponse)
    def search(body: SearchRequest) -> SearchResponse:
        hits = collection.search(body.query, k=body.k, where=body.where, mode=body.mode)
        return SearchResponse(hits=[HitOut(id=h.id, score=h.score if math.isfinite(h.score) else 0.0, text=h.text,
                                           metadata=h.metadata) for h in hits])

    @app.post("/documents", dependencies=guarded, response_model=Written, status_code=201,
              responses={409: {"description": "an id is already stored"}})
    def add(body: Docs) -> Written:
        return write(body, upsert=False)

    @app.put("/documents", dependencies=guarded, response_model=Written)
    def upsert(body: Docs) -> Written:
        return write(body, upsert=True)

    @app.get("/documents/{doc_id}", dependencies=guarded, response_model=DocOut,
             responses={404: {"description": "no such document"}})
    def get_one(doc_id: str) -> DocOut:
        doc = collection.get([doc_id])[0]
        if doc is None:
            raise HTTPException(404, f"no document with id {doc_id!r}")
        return DocOut(id=doc.id, text=doc.text, metadata=doc.metadata)

    @app.post("/documents/get", dependencies=guarded, response_model=list[Optional[DocOut]])
    def get_many(body: Ids) -> list[Optional[DocOut]]:
        return [None if d is None else DocOut(id=d.id, text=d.text, metadata=d.metadata)
                for d in collection.get(body.ids)]

    @app.post("/documents/delete", dependencies=guarded, response_model=Deleted)
    def delete_many(body: Ids) -> Deleted:
        return Deleted(deleted=collection.delete(body.ids))

    @app.delete("/documents/{doc_id}", dependencies=guarded, response_model=Deleted,
                responses={404: {"description": "no such document"}})
    def delete_one(doc_id: str) -> Deleted:
        n = collection.delete([doc_id])
        if n == 0:
            raise HTTPException(404, f"no document with id {doc_id!r}")
        return Deleted(deleted=n)

    return app
