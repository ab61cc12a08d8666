"""The schemas the client checks share. Every value is bounded (short strings, small integer
ranges, a few literals), so that constrained decoding on the random test model always finishes
a valid reply."""

from typing import List, Literal

from pydantic import BaseModel, Field


class Place(BaseModel):
    """A place; every value is bounded, so that even a random model finishes it."""

    city: str = Field(max_length=8)
    rank: int = Field(ge=0, le=99)
    sunny: bool
    kind: Literal["town", "city"]
    tags: List[Literal["a", "b", "c"]] = Field(max_length=3)


class WeatherArgs(BaseModel):
    city: str = Field(max_length=6)
    days: int = Field(ge=1, le=7)


class TimeArgs(BaseModel):
    zone: Literal["utc", "local"]
