"""DNN models for device<->edge split computing: a zoo with early exits, training, chain extraction."""
