"""De-identification (DICOM PS3.15 Annex E): the profile, keyed pseudonyms, the mapping, the verifier."""
