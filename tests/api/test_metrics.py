"""/metrics: Prometheus text with the HTTP and store series."""


def test_metrics_are_prometheus_text(appliance):
    with appliance.client(appliance.token) as http:
        http.get("/api/v1/auth/me")
        for path in ("/api/v1/metrics", "/metrics"):
            response = http.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            assert 'appliance_http_requests_total{method="GET",route="/api/v1/auth/me"' in text
            assert "appliance_store_used_bytes" in text
            assert "appliance_http_request_duration_seconds_bucket" in text
