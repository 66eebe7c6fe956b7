"""The `limit/cursor/sort/order` query parameters of a keyset-paged list, as a route's dependency."""

from __future__ import annotations

from fastapi import Depends, params

from api_shim.deps import pagination
from api_shim.pagination import Listing


def page_params(listing: Listing) -> params.Depends:
    """The dependency parsing `listing`'s page parameters: `Annotated[PageRequest, page_params(LISTING)]`."""
    return Depends(pagination(*listing.sort_columns, default_sort=listing.default_sort))
