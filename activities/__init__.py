"""Side effects. Classes whose constructors take adapters; one module per concern."""
