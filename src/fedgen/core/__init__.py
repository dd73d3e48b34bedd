"""Foundation helpers every layer may use: user-facing errors, device choice, seed derivation,
crash-safe file writes."""
