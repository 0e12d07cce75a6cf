"""Operations: metrics, logs, signals."""
