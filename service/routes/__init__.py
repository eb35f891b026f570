"""HTTP routes: search, embeddings, health and admin."""

from fastapi import APIRouter

from scalingnote.service.routes import admin, embeddings, health, search

api_router = APIRouter()
api_router.include_router(search.router)
api_router.include_router(embeddings.router)
api_router.include_router(health.router)
api_router.include_router(admin.router)
