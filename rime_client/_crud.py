"""What the project-scoped resource groups share: list, get, create, update and delete of one kind of object, named
by id or else by its exact name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

from rime_client._http import not_found
from rime_client.errors import NotFound
from rime_client.models import Model
from rime_client.resources import _InProject, _items, _seg


class Named(Model):
    """An object of a project the API names by `id` and a `name` unique in its collection."""

    id: str
    name: str


M = TypeVar("M", bound=Named)


class ProjectCrud(_InProject, Generic[M]):
    """`/projects/{id}/<collection>`: a subclass names the collection, the model, the ids' prefix and the kind."""

    collection: ClassVar[str]  # e.g. "alert-rules"
    prefix: ClassVar[str]  # the ids' prefix, e.g. "rule_"
    kind: ClassVar[str]  # e.g. "alert rule", for the NotFound of a name
    model: type[M]

    def _base(self, project: str | None) -> str:
        return f"/projects/{_seg(self._project_id(project))}/{self.collection}"

    def _find(self, ref: str, project: str | None) -> tuple[str, M]:
        """(the object's path, the object) by id, else by exact name."""
        base = self._base(project)
        if ref.startswith(self.prefix):
            try:
                found = self.model.model_validate(self._http.request("GET", f"{base}/{_seg(ref)}"))
                return f"{base}/{_seg(found.id)}", found
            except NotFound:
                pass
        listed = _items(self._http, base, self.model, limit=None, page_size=100)
        matches = [item for item in listed if item.name == ref]
        if not matches:
            raise not_found(self.kind, ref, f" in project '{project or self._default}'")
        if len(matches) > 1:  # infrastructure names are unique per resource type only
            raise ValueError(f"{len(matches)} of the project's {self.kind}s are named '{ref}': name one by its id.")
        return f"{base}/{_seg(matches[0].id)}", matches[0]

    def _path(self, ref: str, project: str | None) -> str:
        return self._find(ref, project)[0]

    def list(self, *, project: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[M]:
        """Every object (or the first `limit`), page by page as the iterator is consumed."""
        return _items(self._http, self._base(project), self.model, limit=limit, page_size=page_size)

    def get(self, ref: str, *, project: str | None = None) -> M:
        """By id, else by exact name (then read by its id: the detail view, as by id)."""
        path, found = self._find(ref, project)
        return found if ref.startswith(self.prefix) and found.id == ref else self._read(path)

    def _read(self, path: str) -> M:
        return self.model.model_validate(self._http.request("GET", path))

    def create(self, body: dict[str, Any], *, project: str | None = None) -> M:
        """`body` as the API takes it (see the API reference of the group)."""
        return self.model.model_validate(self._http.request("POST", self._base(project), json=body))

    def update(self, ref: str, changes: dict[str, Any], *, project: str | None = None) -> M:
        """A partial update (JSON merge semantics): only the fields in `changes`."""
        return self.model.model_validate(self._http.request("PATCH", self._path(ref, project), json=changes))

    def delete(self, ref: str, *, project: str | None = None) -> None:
        self._http.request("DELETE", self._path(ref, project))


def given(**fields: Any) -> dict[str, Any]:
    """The fields that are not None: a body or query of optional parts."""
    return {name: value for name, value in fields.items() if value is not None}
