"""Slot values (values.py): the digits rule, catalogues derived and read, resolution order and ambiguity."""
import pytest

import values
from data.corpus import Slot, Utterance


@pytest.mark.parametrize("heard, expected", [
    ("13812345678", "13812345678"),
    ("幺三八一二三四五六七八", "13812345678"),
    ("一三八 一二三四 五六七八", "13812345678"),
    ("０５７１－８８８８－６６６６", "057188886666"),  # full-width digits and dash
    ("两零零八", "2008"),
    ("010-8888·6666", "01088886666"),
    ("十一", None),  # a number word, not digits
    ("幺三八老王", None),
    ("---", None),
    ("", None),
])
def test_digits_rule(heard, expected):
    assert values.digits(heard) == expected


def utt(text, intent, *slots):
    return Utterance("s", text, intent, tuple(Slot(*s) for s in slots))


def test_the_catalogue_of_a_training_split():
    train = [utt("播放奇隆的歌", "music.play", ("singer", 2, 4, "祁隆")),
             utt("播放祁隆的歌", "music.play", ("singer", 2, 4, "祁隆")),
             utt("来首ABC", "music.play", ("song", 2, 5, "ABC")),
             *[utt(f"打{n}", "call", ("phone_num", 1, 1 + len(n), n)) for n in ("10086", "13800000000", "12345")]]
    catalogue = values.derive_catalogue(train)
    assert catalogue.rules == {"phone_num": values.DIGITS}  # all three phone values are digits; singers and songs are not
    assert catalogue.resolve("singer", "奇隆") == ("祁隆", values.CATALOGUE)
    assert catalogue.resolve("singer", "祁隆") == ("祁隆", values.EXACT)
    assert catalogue.resolve("song", "ａｂｃ") == ("ABC", values.EXACT)  # the project's normalisation: width and case
    assert catalogue.resolve("song", "a b c") == ("ABC", values.EXACT)  # spaces carry no token
    assert catalogue.resolve("phone_num", "幺零零八六") == ("10086", values.RULE)  # digits said as words: the rule
    assert catalogue.resolve("phone_num", "幺三九") == ("139", values.RULE)
    assert catalogue.resolve("singer", "周杰伦") == ("周杰伦", values.NONE)
    assert catalogue.resolve("destination", "北京") == ("北京", values.NONE)  # a slot type without entries


def test_an_ambiguous_key_resolves_to_nothing_and_exact_wins_over_a_synonym():
    catalogue = values.Catalogue()
    catalogue.add("contact_name", "王伟", ["小王"])
    catalogue.add("contact_name", "王磊", ["小王"])
    catalogue.add("song", "Hello")
    catalogue.add("song", "HELLO")
    catalogue.add("song", "体面", ["体验"])
    catalogue.add("song", "体验")
    assert catalogue.resolve("contact_name", "小王") == ("小王", values.NONE)  # two people heard alike: ask, do not guess
    assert catalogue.resolve("song", "hello") == ("hello", values.NONE)
    assert catalogue.resolve("song", "体验") == ("体验", values.EXACT)  # a value as heard is not corrected away


def test_catalogue_files_round_trip_and_bad_lines_name_file_and_line(tmp_path):
    catalogue = values.Catalogue()
    catalogue.add("singer", "祁隆", ["奇隆", "齐隆"])
    catalogue.add("song", "霍元甲")
    catalogue.rules["phone_num"] = values.DIGITS
    path = str(tmp_path / "c.jsonl")
    values.write_catalogue(path, catalogue)
    assert values.read_catalogue(path) == catalogue
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0] == '{"slot": "phone_num", "rule": "digits"}'
    assert lines[1] == '{"slot": "singer", "value": "祁隆", "synonyms": ["奇隆", "齐隆"]}'
    for bad, problem in [('{"slot": "song", "value": " "}', "a value entry is"), ('{"slot": "song", "value": "x", "synonyms": "y"}',
                         "synonyms must be a list"), ('{"slot": "song", "value": NaN}', "not JSON"), ("[1]", "an entry is an object"),
                         ('{"slot": "weather", "value": "晴"}', "slot type 'weather' is not one of the model's")]:
        (tmp_path / "bad.jsonl").write_text('{"slot": "song", "value": "x"}\n\n' + bad + "\n", encoding="utf-8")
        with pytest.raises(values.CatalogueError, match=rf"bad.jsonl:3: .*{problem}"):
            values.read_catalogue(str(tmp_path / "bad.jsonl"), ["song", "singer"])


PINYIN = {"凉": ("liang",), "良": ("liang",), "梁": ("liang",), "海": ("hai",), "草": ("cao",), "舞": ("wu",), "屋": ("wu",),
          "韩": ("han",), "朝": ("chao", "zhao"), "张": ("zhang",), "赞": ("zan",), "山": ("shan",), "三": ("san",),
          "说": ("shuo",), "散": ("san",), "就": ("jiu",), "出": ("chu",), "苏": ("su",), "珊": ("shan",), "鸠": ("jiu",),
          "李": ("li",), "白": ("bai",), "力": ("li",), "拔": ("ba",), "年": ("nian",), "连": ("lian",)}


def sound_catalogue():
    catalogue = values.Catalogue(pinyin=PINYIN, rules={"song": values.PRONUNCIATION, "singer": values.PRONUNCIATION})
    for song in ("凉凉", "海草舞", "说散就散", "李白", "张山"):
        catalogue.add("song", song)
    catalogue.add("singer", "年年")
    catalogue.add("singer", "连连")
    return catalogue


@pytest.mark.parametrize("heard, expected", [
    ("良良", ("凉凉", values.PRONUNCIATION)),  # the same readings
    ("海草屋", ("海草舞", values.PRONUNCIATION)),
    ("赞三", ("赞三", values.NONE)),  # zan san: zhang shan once folded, but two folded syllables of two are beyond the bound
    ("出散就散", ("说散就散", values.PRONUNCIATION)),  # one other syllable of four
    ("苏珊鸠山", ("苏珊鸠山", values.NONE)),  # three syllables off: far
    ("力拔", ("力拔", values.NONE)),  # li ba vs li bai: a whole syllable off in two
    ("韩朝舞", ("韩朝舞", values.NONE)),
    ("凉", ("凉", values.NONE)),  # one character: never by sound
])
def test_pronunciation_matches_alike_syllables_within_the_bound(heard, expected):
    assert sound_catalogue().resolve("song", heard) == expected


def test_pronunciation_is_folded_ambiguous_or_off():
    catalogue = sound_catalogue()
    assert values.fuzzy("zhang") == "zan" and values.fuzzy("ning") == "lin" and values.fuzzy("shuang") == "suan"
    assert catalogue.sound_distance("良良", "凉凉") == 0 and catalogue.sound_distance("年年", "连连") == 2  # n/l folded twice
    # 年连 is one folded syllable from both 年年 and 连连: two values equally close, so nothing
    assert catalogue.resolve("singer", "年连") == ("年连", values.NONE)
    catalogue.rules.pop("song")  # a partial list: no matching by sound
    assert catalogue.resolve("song", "良良") == ("良良", values.NONE)


def test_the_pinyin_table_covers_the_ideographs_in_ascii(tmp_path):
    table = values.pinyin_table()
    assert len(table) > 20000 and table["祁"][0] == "qi" and "zhang" in table["长"] and table["欸"][1] == "e"
    values.write_pinyin(str(tmp_path / "p.txt"), table)
    assert values.read_pinyin(str(tmp_path / "p.txt")) == table
    (tmp_path / "bad.txt").write_text("祁\tqi\n两个\tliang ge\n", encoding="utf-8")
    with pytest.raises(values.CatalogueError, match=r"bad.txt:2: expected a character"):
        values.read_pinyin(str(tmp_path / "bad.txt"))
