"""Operations: each plans its items into the ledger and knows how to do one item; the engine does the rest."""
