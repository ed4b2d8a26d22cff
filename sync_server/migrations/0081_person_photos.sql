-- 人脸采集 and 证件照采集 (sync_server/services/photos.py): a person's face photo and ID photo, checked
-- on the server (one face, size, sharpness, light) and stored re-encoded as JPEG without metadata.
-- Per person and kind at most two rows: the current photo and the one it replaced; a new photo drops
-- the previous one. Each image is bounded (the upload's own bound, 1 MiB; stored ones are smaller).

CREATE TABLE person_photos (
    person_id INTEGER NOT NULL,             -- persons.id
    kind TEXT NOT NULL CHECK (kind IN ('face', 'id_photo')),
    slot TEXT NOT NULL CHECK (slot IN ('current', 'previous')),
    image BLOB NOT NULL CHECK (length(image) BETWEEN 1 AND 1048576),   -- JPEG, upright, no EXIF
    width INTEGER NOT NULL CHECK (width BETWEEN 1 AND 4096),           -- of the stored image
    height INTEGER NOT NULL CHECK (height BETWEEN 1 AND 4096),
    face_x INTEGER NOT NULL,                -- the face found, in the stored image's pixels
    face_y INTEGER NOT NULL,
    face_w INTEGER NOT NULL,
    face_h INTEGER NOT NULL,
    checked_ms INTEGER NOT NULL,            -- when the checks passed and it was stored
    source TEXT NOT NULL CHECK (source IN ('app', 'hall')),
    operator TEXT,                          -- the hall clerk's username (source hall); NULL from the app
    sha256 TEXT NOT NULL,                   -- of the stored JPEG, hex
    PRIMARY KEY (person_id, kind, slot)
);
