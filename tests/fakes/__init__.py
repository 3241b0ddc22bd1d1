"""Local fake servers that speak each provider's documented wire format, on loopback.

Used by adapter tests, and reusable by benchmarks and a demo mode."""
