"""Reports for the security team: queries over the store (:mod:`.query`), one renderer per
format (:mod:`.formats`), and the records between them (:mod:`.interface`)."""
