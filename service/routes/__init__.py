"""HTTP routes: search, health and admin."""

from fastapi import APIRouter

from scalingnote.service.routes import admin, health, search

api_router = APIRouter()
api_router.include_router(search.router)
api_router.include_router(health.router)
api_router.include_router(admin.router)
