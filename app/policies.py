"""Who may do what: small functions the routes call and the tests call directly."""

from typing_extensions import TypeIs

from app.models import Role, User


def is_signed_in(user: User | None) -> TypeIs[User]:
    return user is not None and user.is_active


def can_label(user: User | None) -> bool:
    """Labelers and admins can both take tasks (admins often try the task themselves)."""
    return is_signed_in(user) and user.role in (Role.labeler, Role.admin)


def can_admin(user: User | None) -> bool:
    return is_signed_in(user) and user.role == Role.admin
