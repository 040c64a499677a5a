"""The web role: accounts, tenants, tutors, students, sessions and transcripts (PostgreSQL)."""
