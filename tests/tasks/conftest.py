import pytest


@pytest.fixture
def assert_problem_shape():
    def check(response, status, code):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == code
        return body

    return check
