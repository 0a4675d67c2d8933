//! MTurk requester API client (being written).
