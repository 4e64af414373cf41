"""ID-based baselines trained and evaluated under the project's protocol (issue 22)."""
