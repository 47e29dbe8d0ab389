from service.engine.stop import StopStringMatcher


def test_finds_earliest_stop_string_and_cuts_it():
    matcher = StopStringMatcher(("END", "STOP"))
    match = matcher.find("abc STOP def END", new_from=0)
    assert match is not None and match.stop_string == "STOP" and match.text_end == 4


def test_include_stop_string_keeps_it():
    match = StopStringMatcher(("END",), include_stop_string=True).find("abcEND", new_from=3)
    assert match is not None and match.text_end == 6


def test_match_spanning_old_and_new_text():
    # "EN" was already there, "D" is new: the match must still be found.
    match = StopStringMatcher(("END",)).find("xxEND", new_from=4)
    assert match is not None and match.text_end == 2


def test_old_text_alone_is_not_searched_again():
    assert StopStringMatcher(("END",)).find("END and more", new_from=8) is None


def test_a_short_stop_string_in_old_text_is_not_found_because_a_longer_one_exists():
    # Text that was not searched before (generated under min_new_tokens) stays unsearched.
    assert StopStringMatcher((",", "The End")).find("one, two", new_from=5) is None


def test_safe_end_holds_back_possible_prefix():
    matcher = StopStringMatcher(("\nUser:",))
    assert matcher.safe_end("Hello\nUs") == len("Hello")
    assert matcher.safe_end("Hello\nUx") == len("Hello\nUx")
    assert matcher.safe_end("Hello") == len("Hello")


def test_no_stop_strings_holds_nothing():
    matcher = StopStringMatcher(())
    assert matcher.find("anything", 0) is None
    assert matcher.safe_end("anything") == len("anything")
