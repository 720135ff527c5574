"""The OpenAPI pages load every asset from the app itself."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_pages_reference_only_local_assets_and_they_are_served(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        urls += re.findall(r"""url:\\s*['"]([^'"]+)['"]""", html.text)
        assert urls, page
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
        for url in urls:
            if url.startswith("/docs-assets/"):
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
                # What a script or style sheet would load by itself: an image or font source
                # (a link a reader may follow is fine), and Swagger UI's online validator.
                loads = re.findall(rb"""(?:src:|url\()\s*["']?(https?://[^"')\s]+)""",
                                   asset.content)
                assert not loads, (url, loads[:5])
        assert "validatorUrl\": null" in html.text or page == "/redoc"
        assert "fonts.googleapis" not in html.text and "cdn" not in html.text.lower()


def test_openapi_documents_limits_and_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/classify", "/generate", "/generate_stream", "/score", "/models",
                 "/models/{name}", "/health/live", "/health/ready", "/metrics"):
        assert path in paths, path
    params = spec["components"]["schemas"]["GenerateParameters"]["properties"]
    assert params["max_new_tokens"]["minimum"] == 1
    assert params["top_p"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1.0}
    assert params["max_new_tokens"]["description"]
    assert spec["components"]["schemas"]["GenerateRequest"]["properties"]["inputs"]["examples"] == ["ROMEO:"]
