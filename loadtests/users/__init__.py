"""The Locust user classes, one module each, and the scenarios that mix them."""
