"""In-process doubles of external systems (real HTTP on 127.0.0.1), for tests and the demo."""

from __future__ import annotations

from worker.doubles.jira import JiraDouble, RecordedRequest, jira_delivery, sign_jira

__all__ = ["JiraDouble", "RecordedRequest", "jira_delivery", "sign_jira"]
