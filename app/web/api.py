"""JSON API under /api/v1 (bearer tokens). Thin handlers; logic lives in app.services."""

from fastapi import APIRouter
from pydantic import BaseModel

from app.deps import ApiUser, SessionRoute

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["api"])


class MeOut(BaseModel):
    id: int
    email: str
    name: str
    role: str


@router.get("/me", response_model=MeOut)
def me(user: ApiUser):
    return MeOut(id=user.id, email=user.email, name=user.name, role=user.role.value)
