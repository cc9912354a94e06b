"""Connectors: projectors, media tokenizers (projector, zoom, av) and LLM routes (plain, inner_adaptor).

    from vlm.connectors import build_media, build_route, MEDIA, ROUTES, PROJECTORS
    MEDIA.names()        # ['projector', 'zoom']

Each kind has its interface and registry in `vlm.connectors.base`; importing this package
registers every part (one module each).
"""
from vlm.connectors import av, inner_adaptor, projector, zoom  # noqa: F401  (registration)
from vlm.connectors.base import (  # noqa: F401
    MEDIA,
    PROJECTORS,
    ROUTES,
    MediaContext,
    MediaTokenizer,
    Route,
    build_media,
    build_projector,
    build_route,
)
