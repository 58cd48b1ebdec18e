"""The process starts, reports health and answers with problem details."""


def test_health_and_problem_details(appliance):
    with appliance.client() as http:
        health = http.get("/api/v1/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert set(health.json()["components"]) >= {"store", "http"}
        missing = http.get("/api/v1/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "not_found"
    assert appliance.stop() == 0
