"""City names for the needle-in-a-haystack task: ASCII, no digits, '=' or ';', unique, one or two words."""

from __future__ import annotations

CITIES: tuple[str, ...] = (
    "Amsterdam", "Athens", "Auckland", "Baghdad", "Bangkok", "Barcelona", "Beijing", "Beirut", "Belgrade",
    "Berlin", "Bogota", "Boston", "Brisbane", "Brussels", "Bucharest", "Budapest", "Cairo", "Calgary",
    "Cape Town", "Caracas", "Casablanca", "Chicago", "Copenhagen", "Dakar", "Dallas", "Damascus", "Delhi",
    "Denver", "Detroit", "Dhaka", "Dresden", "Dubai", "Dublin", "Edinburgh", "Florence", "Frankfurt",
    "Geneva", "Glasgow", "Hamburg", "Hanoi", "Havana", "Helsinki", "Hong Kong", "Honolulu", "Houston",
    "Istanbul", "Jakarta", "Jerusalem", "Johannesburg", "Kabul", "Karachi", "Kathmandu", "Kiev", "Kyoto",
    "Lagos", "Lahore", "Lima", "Lisbon", "Liverpool", "London", "Los Angeles", "Lyon", "Madrid", "Manchester",
    "Manila", "Marseille", "Melbourne", "Mexico City", "Miami", "Milan", "Minsk", "Montreal", "Moscow",
    "Mumbai", "Munich", "Nairobi", "Naples", "New York", "Nice", "Osaka", "Oslo", "Ottawa", "Paris", "Perth",
    "Philadelphia", "Phoenix", "Porto", "Prague", "Quito", "Riga", "Rio de Janeiro", "Riyadh", "Rome",
    "Rotterdam", "San Diego", "San Francisco", "Santiago", "Seattle", "Seoul", "Seville", "Shanghai",
    "Singapore", "Sofia", "Stockholm", "Sydney", "Taipei", "Tallinn", "Tehran", "Tokyo", "Toronto", "Tunis",
    "Turin", "Valencia", "Vancouver", "Venice", "Vienna", "Vilnius", "Warsaw", "Washington", "Wellington",
    "Zagreb", "Zurich",
)
