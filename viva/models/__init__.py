"""Core domain models shared by every app: archive, jobs, users and roles."""

from .archive import Collection, Face, Image, Shot, Video
from .jobs import Job
from .users import Profile

__all__ = ["Collection", "Face", "Image", "Job", "Profile", "Shot", "Video"]
