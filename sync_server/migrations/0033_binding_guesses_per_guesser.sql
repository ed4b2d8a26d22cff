-- Binding a phone needs the card PIN, and wrong name / number guesses throttle the guesser (its
-- app user id and its client address), never the cardholder asked about: bind_failures goes,
-- bind_guessers comes (sync_server/services/binding.py).

DROP TABLE bind_failures;
CREATE TABLE bind_guessers (
    guesser TEXT PRIMARY KEY,           -- "app:<app user id>" or "address:<client address>"
    failures INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX bind_guessers_updated ON bind_guessers(updated_ms);
