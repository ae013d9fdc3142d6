"""Load tests: Locust users that behave like the gateway's real clients (`loadtests/run`)."""
