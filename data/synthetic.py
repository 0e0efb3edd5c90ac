"""A small seeded generator of in-car voice utterances in the corpus format, for two domains.

`nlpcc` is the project's embedded offline default: templates and lexicons written for this project
(no text taken from the NLPCC corpus) with the NLPCC 2018 Task 4 label set (11 intents, 15 slot
types), ASR corrections (`text||value`), Latin words with spaces, digits and full-width
characters, so every code path of the real corpus is exercised. It is not a substitute for the
real corpus. `vehicle` is a second, different label set (vehicle controls: climate, windows,
seats, lights, volume; slot-less intents, slot types shared by several intents, no catch-all
intent): what a team training on its own domain has (docs/data.md#your-own-data).
"""
import dataclasses
import random
import re
from typing import Dict, List, Sequence, Tuple

from data.corpus import Slot, Utterance


@dataclasses.dataclass(frozen=True)
class Domain:
    lexicon: Dict[str, Sequence[str]]  # slot type -> values
    corrections: Dict[str, Sequence[Tuple[str, str]]]  # slot type -> (misheard form, value)
    templates: Dict[str, Sequence[str]]  # intent -> templates with {slot_type} fields
    intent_weights: Dict[str, float]


LEXICON = {
    "song": ["晚风轻轻吹", "回家的路", "星光下的约定", "一路向北方", "雨后彩虹", "山间小溪", "月亮船",
             "morning light", "city of stars", "旧时光", "夏夜晚风", "远方的灯塔", "青春纪念册", "蓝色海岸"],
    "singer": ["林小雨", "陈一凡", "王大川", "李思思", "张北辰", "赵晴", "周明远", "the night owls",
               "何晓东", "苏暖", "ab乐队", "孙悦然"],
    "theme": ["dj", "抖音热歌", "经典老歌", "网络神曲", "儿歌", "车载音乐"],
    "style": ["摇滚", "民谣", "爵士", "r&b", "轻音乐", "b box", "说唱"],
    "age": ["八零后", "九零后", "七十年代", "两千年"],
    "toplist": ["热歌榜", "新歌榜", "飙升榜", "经典榜"],
    "emotion": ["伤感", "开心", "安静", "励志", "浪漫"],
    "language": ["粤语", "英文", "日语", "韩语", "闽南语"],
    "instrument": ["钢琴", "吉他", "古筝", "萨克斯", "小提琴"],
    "scene": ["开车", "睡前", "运动", "下雨天", "旅行"],
    "destination": ["人民公园", "火车南站", "滨江大道3号", "第一人民医院", "市图书馆", "机场t2航站楼",
                    "万达广场", "西湖景区", "北京", "上海虹桥站", "中山路88号", "科技园南区"],
    "custom_destination": ["家", "公司", "单位", "学校", "老家"],
    "origin": ["公司", "火车站", "家里", "东门", "体育中心"],
    "phone_num": ["13812345678", "15900001111", "10086", "0571 8888 6666", "18600002222", "１２３４５"],
    "contact_name": ["老王", "张经理", "妈妈", "李阿姨", "小陈", "王晓明", "赵老师", "tony"],
}

# Misheard forms an ASR system might produce, with the value they normalize to.
CORRECTIONS = {
    "singer": [("林晓雨", "林小雨"), ("陈一帆", "陈一凡"), ("张北晨", "张北辰")],
    "song": [("回家的鹿", "回家的路"), ("月亮穿", "月亮船")],
    "contact_name": [("老汪", "老王")],
}

TEMPLATES = {
    "music.play": [
        "播放{singer}的{song}", "我想听{song}", "来一首{singer}的歌", "放一首{song}", "给我放{singer}唱的{song}",
        "播放{theme}", "来点{style}音乐", "放几首{age}的歌", "播放{toplist}", "来点{emotion}的歌",
        "我要听{language}歌", "放一段{instrument}曲", "适合{scene}听的歌", "来一首{emotion}的{language}歌",
        "{song}", "听{singer}", "播放{style}", "来首{instrument}版的{song}",
    ],
    "navigation.navigation": [
        "导航去{destination}", "带我去{destination}", "去{destination}怎么走", "我要去{destination}",
        "导航到{custom_destination}", "回{custom_destination}", "从{origin}到{destination}",
        "{destination}", "帮我导航到{destination}", "从{origin}去{custom_destination}",
    ],
    "phone_call.make_a_phone_call": [
        "打电话给{contact_name}", "给{contact_name}打个电话", "拨打{phone_num}", "呼叫{contact_name}",
        "打{phone_num}", "帮我打给{contact_name}", "拨{phone_num}这个号码",
    ],
    "OTHERS": [
        "今天天气怎么样", "你好", "讲个笑话", "现在几点了", "打开空调", "把车窗关上", "你叫什么名字",
        "谢谢", "明天会下雨吗", "好的", "我饿了", "车里有点热", "ok", "什么意思", "附近有加油站吗", "嗯",
    ],
    "navigation.cancel_navigation": ["取消导航", "不去了", "停止导航", "关闭导航", "退出导航", "不用导航了"],
    "music.pause": ["暂停", "暂停播放", "先别放了", "停一下音乐", "暂停一下"],
    "navigation.open": ["打开导航", "开启导航", "打开地图", "启动导航"],
    "music.next": ["下一首", "换一首", "切歌", "播放下一首", "下一曲"],
    "navigation.start_navigation": ["开始导航", "出发", "开始吧", "走吧导航"],
    "phone_call.cancel": ["挂断", "不打了", "取消拨打", "挂掉电话"],
    "music.prev": ["上一首", "播放上一首", "返回上一首", "上一曲"],
}

# Roughly the shape of the real corpus: a few common intents and a long tail.
INTENT_WEIGHTS = {
    "OTHERS": 30, "music.play": 30, "navigation.navigation": 18, "phone_call.make_a_phone_call": 12,
    "navigation.cancel_navigation": 4, "music.pause": 2, "navigation.open": 2, "music.next": 1.5,
    "navigation.start_navigation": 1, "phone_call.cancel": 1, "music.prev": 1,
}

NLPCC = Domain(LEXICON, CORRECTIONS, TEMPLATES, INTENT_WEIGHTS)

VEHICLE = Domain(
    lexicon={
        "temperature": ["二十二度", "24度", "二十五点五度", "26℃", "十八度", "最低", "最高"],
        "zone": ["主驾", "副驾", "后排", "全车", "左后"],
        "level": ["一档", "二档", "三档", "最大", "最小", "5档"],
        "window": ["左前", "右前", "左后", "右后", "全部", "主驾", "副驾"],
        "degree": ["一半", "一点", "三分之一", "百分之五十", "20%"],
        "seat": ["主驾", "副驾", "后排左侧", "后排右侧", "驾驶"],
        "light": ["阅读灯", "氛围灯", "雾灯", "近光灯", "远光灯", "车内灯"],
    },
    corrections={"zone": [("主价", "主驾"), ("副价", "副驾")], "light": [("物灯", "雾灯")]},
    templates={
        "climate.set_temperature": ["空调调到{temperature}", "把{zone}温度调到{temperature}", "温度设为{temperature}",
                                    "{zone}空调{temperature}", "调到{temperature}", "{temperature}"],
        "climate.ac_on": ["打开空调", "开空调", "空调打开", "有点热开下空调", "开冷气"],
        "climate.ac_off": ["关闭空调", "关空调", "空调关掉", "别吹了"],
        "climate.fan_speed": ["风量调到{level}", "风速{level}", "把{zone}风量开到{level}", "风开{level}"],
        "window.open": ["打开{window}车窗", "把{window}窗户打开{degree}", "开{window}窗", "车窗开{degree}",
                        "{window}车窗降下来"],
        "window.close": ["关上{window}车窗", "关窗", "把{window}窗户关上", "车窗都关了"],
        "seat.heat": ["打开{seat}座椅加热", "{seat}座椅加热调到{level}", "座椅加热{level}", "{seat}座椅好冷"],
        "media.volume_up": ["声音大一点", "音量调高", "大声点", "听不清"],
        "media.volume_set": ["音量调到{level}", "音量{level}", "把声音调到{level}"],
        "lights.on": ["打开{light}", "开一下{light}", "{light}打开"],
        "lights.off": ["关闭{light}", "关掉{light}", "把{light}关了"],
    },
    intent_weights={
        "climate.set_temperature": 14, "climate.ac_on": 8, "climate.ac_off": 6, "climate.fan_speed": 8, "window.open": 12,
        "window.close": 8, "seat.heat": 10, "media.volume_up": 5, "media.volume_set": 7, "lights.on": 8, "lights.off": 6,
    },
)

DOMAINS = {"nlpcc": NLPCC, "vehicle": VEHICLE}

_FIELD = re.compile(r"\{(\w+)\}")


def make_utterance(rng: random.Random, session_id: str, intent: str, domain: Domain = NLPCC) -> Utterance:
    template = rng.choice(domain.templates[intent])
    text, slots, cursor = "", [], 0
    for m in _FIELD.finditer(template):
        text += template[cursor : m.start()]
        kind = m.group(1)
        if kind in domain.corrections and rng.random() < 0.1:
            span, value = rng.choice(domain.corrections[kind])
        else:
            span = value = rng.choice(domain.lexicon[kind])
        slots.append(Slot(kind, len(text), len(text) + len(span), value))
        text += span
        cursor = m.end()
    return Utterance(session_id, text + template[cursor:], intent, tuple(slots))


def generate(num_utterances: int = 3000, seed: int = 7, domain: str = "nlpcc") -> List[Utterance]:
    """`num_utterances` utterances of `domain` (DOMAINS) in sessions of 1-6."""
    spec = DOMAINS[domain]
    rng = random.Random(seed)
    intents, weights = zip(*spec.intent_weights.items())
    prefix = "synthetic" if domain == "nlpcc" else f"synthetic-{domain}"
    utterances, session = [], 0
    while len(utterances) < num_utterances:
        session += 1
        session_id = f"{prefix}-{seed}-{session:05d}"
        for _ in range(min(rng.randint(1, 6), num_utterances - len(utterances))):
            utterances.append(make_utterance(rng, session_id, rng.choices(intents, weights)[0], spec))
    return utterances
