"""The preview apps' REST routes: an app's preview settings and previews, every app's previews,
and removing one by hand.

A thin layer over core_previews.Previews: parse, call one use case, render. The previews
themselves are made by the push webhook's pull request events (api/git.py), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from lbsolo.previews import MAX_PER_APP, MAX_PR_NUMBER


class PreviewSettingsIn(BaseModel):
    enabled: bool | None = Field(default=None, description="pull requests get previews (off by default)")
    with_secrets: bool | None = Field(
        default=None,
        description="previews get the app's secret config too (keys marked secret or named like one); "
        "the app's add-on URLs never",
    )
    with_addons: bool | None = Field(
        default=None,
        description="previews get their own add-ons: a twin of each of the app's, loaded from its latest local backup",
    )
    max: int | None = Field(default=None, ge=1, le=MAX_PER_APP, description="previews of this app at once")


class PreviewSettingsOut(BaseModel):
    enabled: bool
    with_secrets: bool
    with_addons: bool
    max: int


class PreviewOut(BaseModel):
    parent: str
    number: int
    status: str = Field(description="building, running, failed, refused, or missing (destroyed by hand)")
    app: str = Field(description="the preview app's name (empty until made, and after a failure)")
    url: str | None
    head: str = Field(description="the commit it runs (or was asked to build)")
    provider: str
    fork: bool = Field(description="the pull request comes from a fork (still built from the app's own pull ref)")
    error: str = Field(description="why it was refused or failed, what it lacks, or the last update's failure")
    created_at: float
    updated_at: float


class PreviewOf(BaseModel):
    parent: str
    number: int


class AppPreviewsOut(BaseModel):
    app: str
    repo_connected: bool
    settings: PreviewSettingsOut
    previews: list[PreviewOut]
    preview_of: PreviewOf | None = Field(description="the app and pull request this app previews, if it is a preview")


def create_previews_router(platform: Any, require_token: Callable[..., Any]) -> APIRouter:
    """`platform` is core.Platform (its `previews`, read when a route runs)."""
    router = APIRouter(dependencies=[Depends(require_token)], tags=["previews"])

    @router.get("/api/previews")
    async def all_previews() -> list[PreviewOut]:
        """Every app's preview apps, newest first within each app."""
        return [PreviewOut(**p) for p in await platform.previews.listing()]

    @router.get("/api/apps/{name}/previews")
    async def app_previews(name: str) -> AppPreviewsOut:
        """An app's preview settings and its previews, each with its URL."""
        return AppPreviewsOut(**await platform.previews.describe(name))

    @router.patch("/api/apps/{name}/previews")
    async def set_preview_settings(name: str, body: PreviewSettingsIn) -> AppPreviewsOut:
        """Change the given preview settings; the others stay."""
        return AppPreviewsOut(**await platform.previews.set_settings(name, **body.model_dump()))

    @router.delete("/api/apps/{name}/previews/{number}")
    async def destroy_preview(name: str, number: int = Path(ge=1, le=MAX_PR_NUMBER)) -> dict[str, Any]:
        """Remove one preview (its containers, images, volumes, route) as closing its pull request would."""
        return dict(await platform.previews.destroy(name, number))

    return router
