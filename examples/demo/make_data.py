#!/usr/bin/env python3
"""Generates the demo's bundled benchmark data: examples/demo/data/<benchmark>.jsonl.

The files are committed; this script is here so anyone can see where they came from and
regenerate them byte for byte (`python3 examples/demo/make_data.py`, or `--check` to verify).
Every item is built from small fact tables or computed templates, so each answer key is right,
and a fixed seed makes the output deterministic. The four sets imitate the shape of real
benchmarks (KMMLU, HAE-RAE, GSM8K, CLIcK) but are tiny, synthetic and not their content.
arith-mini is the short-answer set the served-model demo asks its test model servers: each
prompt ends with one "A + B" or "A * B", which is what those servers can calculate.

One JSON object per line:
  multiple choice: {"id", "subject", "question", "choices": [4 strings], "answer": index}
  gsm8k-mini:      {"id", "subject", "question", "answer": integer}
  arith-mini:      {"id", "subject", "prompt", "answer": string of digits}  (openai `generate`)
Standard library only.
"""

import argparse
import datetime
import json
import random
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SEED = 20240611

# How many items each benchmark gets; configs/campaigns/demo.json and demo-exec.json use the same
# numbers.
SIZES = {
    "kmmlu-mini": 400,
    "haerae-mini": 240,
    "gsm8k-mini": 250,
    "click-mini": 320,
    "arith-mini": 240,
}


# ---------------------------------------------------------------------------------------------
# Korean helpers


def _last_sound(word):
    """The character whose sound picks the particle: a trailing "(...)" is not read aloud."""
    word = word.rstrip()
    if word.endswith(")") and "(" in word:
        word = word[: word.rindex("(")].rstrip()
    return word[-1]


def particle(word, with_batchim, without_batchim):
    """The particle that fits the word's last sound (은/는, 이/가, 을/를); both forms as
    "을(를)" when the word does not end in Hangul or a digit."""
    last = _last_sound(word)
    code = ord(last) - 0xAC00
    if 0 <= code < 11172:
        final = code % 28
        # 로 after a vowel and also after ㄹ (final index 8): 서울로, 바다로.
        if with_batchim == "으로" and final == 8:
            return without_batchim
        return with_batchim if final != 0 else without_batchim
    if last.isdigit():
        # Read in Sino-Korean: 0 영, 1 일, 3 삼, 6 육, 7 칠, 8 팔 end in a consonant.
        return with_batchim if last in "013678" else without_batchim
    return f"{with_batchim}({without_batchim})"


def josa(word, with_batchim, without_batchim):
    """The word followed by its particle, e.g. josa("서울", "은", "는") == "서울은"."""
    return word + particle(word, with_batchim, without_batchim)


NATIVE_UNITS = ["", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉"]
NATIVE_TENS = ["", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔"]


def native_number(n):
    """Native Korean numeral for 1..99 (e.g. 23 -> 스물셋)."""
    assert 1 <= n <= 99
    return NATIVE_TENS[n // 10] + NATIVE_UNITS[n % 10]


# ---------------------------------------------------------------------------------------------
# Item construction


def mc_item(rng, subject, question, correct, distractor_pool):
    """A four-choice item with the correct answer at a random position."""
    pool = [d for d in dict.fromkeys(distractor_pool) if d != correct]
    assert len(pool) >= 3, (question, correct)
    choices = rng.sample(pool, 3) + [correct]
    rng.shuffle(choices)
    return {
        "subject": subject,
        "question": question,
        "choices": [str(c) for c in choices],
        "answer": choices.index(correct),
    }


def numeric_distractors(rng, value, spread):
    out = set()
    while len(out) < 3:
        candidate = value + rng.choice([-1, 1]) * rng.randint(1, spread)
        if candidate != value:
            out.add(candidate)
    return list(out)


def assemble(rng, name, fixed, generators):
    """Shuffled fixed items, topped up round-robin from the open-ended generators; no question
    appears twice."""
    size = SIZES[name]
    seen = set()
    items = []

    def take(item):
        key = item["question"] + "\x00" + "\x00".join(item.get("choices", []))
        if key in seen or len(items) >= size:
            return
        seen.add(key)
        items.append(item)

    rng.shuffle(fixed)
    for item in fixed[: size * 2 // 3]:
        take(item)
    turn = 0
    while len(items) < size:
        take(generators[turn % len(generators)](rng))
        turn += 1
    rng.shuffle(items)
    width = len(str(size))
    return [{"id": f"{name}-{i:0{width}d}", **item} for i, item in enumerate(items)]


# ---------------------------------------------------------------------------------------------
# kmmlu-mini: Korean exam-style questions over school subjects.

ELEMENTS = [  # (name, symbol, atomic number)
    ("수소", "H", 1), ("헬륨", "He", 2), ("리튬", "Li", 3), ("탄소", "C", 6), ("질소", "N", 7),
    ("산소", "O", 8), ("플루오린", "F", 9), ("네온", "Ne", 10), ("나트륨", "Na", 11),
    ("마그네슘", "Mg", 12), ("알루미늄", "Al", 13), ("규소", "Si", 14), ("인", "P", 15),
    ("황", "S", 16), ("염소", "Cl", 17), ("아르곤", "Ar", 18), ("칼륨", "K", 19),
    ("칼슘", "Ca", 20), ("철", "Fe", 26), ("니켈", "Ni", 28), ("구리", "Cu", 29),
    ("아연", "Zn", 30), ("은", "Ag", 47), ("주석", "Sn", 50), ("금", "Au", 79),
    ("수은", "Hg", 80), ("납", "Pb", 82), ("우라늄", "U", 92),
]

CAPITALS = [
    ("프랑스", "파리"), ("독일", "베를린"), ("일본", "도쿄"), ("중국", "베이징"),
    ("캐나다", "오타와"), ("오스트레일리아", "캔버라"), ("브라질", "브라질리아"),
    ("이탈리아", "로마"), ("스페인", "마드리드"), ("영국", "런던"), ("러시아", "모스크바"),
    ("인도", "뉴델리"), ("이집트", "카이로"), ("튀르키예", "앙카라"), ("태국", "방콕"),
    ("베트남", "하노이"), ("아르헨티나", "부에노스아이레스"), ("멕시코", "멕시코시티"),
    ("뉴질랜드", "웰링턴"), ("스위스", "베른"), ("폴란드", "바르샤바"), ("그리스", "아테네"),
    ("포르투갈", "리스본"), ("스웨덴", "스톡홀름"), ("노르웨이", "오슬로"),
    ("핀란드", "헬싱키"), ("몽골", "울란바토르"), ("필리핀", "마닐라"), ("케냐", "나이로비"),
    ("오스트리아", "빈"),
]

SI_UNITS = [
    ("힘", "뉴턴(N)"), ("에너지", "줄(J)"), ("일률", "와트(W)"), ("압력", "파스칼(Pa)"),
    ("전하량", "쿨롬(C)"), ("전위차", "볼트(V)"), ("전기 저항", "옴(Ω)"),
    ("진동수", "헤르츠(Hz)"), ("자기 선속", "웨버(Wb)"), ("전기 용량", "패럿(F)"),
    ("인덕턴스", "헨리(H)"), ("자기장의 세기(자속 밀도)", "테슬라(T)"),
]

HISTORY_YEARS = [
    ("고려 건국", 918), ("조선 건국", 1392), ("훈민정음 반포", 1446), ("임진왜란 발발", 1592),
    ("병자호란 발발", 1636), ("강화도 조약 체결", 1876), ("임오군란", 1882),
    ("갑신정변", 1884), ("동학 농민 운동", 1894), ("을사늑약 체결", 1905),
    ("국권 피탈(경술국치)", 1910), ("3·1 운동", 1919), ("8·15 광복", 1945),
    ("대한민국 정부 수립", 1948), ("6·25 전쟁 발발", 1950), ("4·19 혁명", 1960),
    ("5·18 민주화 운동", 1980), ("서울 올림픽 개최", 1988),
]


def kmmlu_fixed(rng):
    items = []
    symbols = [e[1] for e in ELEMENTS]
    names = [e[0] for e in ELEMENTS]
    for name, symbol, number in ELEMENTS:
        items.append(mc_item(rng, "화학", f"다음 중 원소 '{name}'의 원소 기호로 옳은 것은?",
                             symbol, symbols))
        items.append(mc_item(rng, "화학", f"원자 번호가 {number}번인 원소는 무엇인가?", name, names))
    countries = [c for c, _ in CAPITALS]
    cities = [c for _, c in CAPITALS]
    for country, city in CAPITALS:
        items.append(mc_item(rng, "세계 지리", f"{country}의 수도는 어디인가?",
                             city, cities))
        items.append(mc_item(rng, "세계 지리",
                             f"{josa(city, '은', '는')} 어느 나라의 수도인가?", country, countries))
    quantities = [q for q, _ in SI_UNITS]
    units = [u for _, u in SI_UNITS]
    for quantity, unit in SI_UNITS:
        items.append(mc_item(rng, "물리", f"다음 중 {quantity}의 SI 단위는?",
                             unit, units))
        items.append(mc_item(rng, "물리", f"다음 중 SI 단위가 {unit}인 물리량은?",
                             quantity, quantities))
    years = [y for _, y in HISTORY_YEARS]
    for event, year in HISTORY_YEARS:
        near = [year + d for d in (-12, -6, -4, -2, 2, 4, 6, 12)]
        items.append(mc_item(rng, "한국사", f"{josa(event, '이', '가')} 일어난 해는?",
                             f"{year}년", [f"{y}년" for y in near + years]))
    return items


def kmmlu_multiply(rng):
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    value = a * b
    return mc_item(rng, "수학", f"{a} × {b}의 값은?", str(value),
                   [str(v) for v in numeric_distractors(rng, value, 40)])


def kmmlu_linear(rng):
    x = rng.randint(-12, 15)
    a = rng.choice([2, 3, 4, 5, 6, 7, 8, 9])
    b = rng.randint(-30, 30)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    return mc_item(rng, "수학", f"일차방정식 {a}x {sign} {abs(b)} = {c}의 해는?", f"x = {x}",
                   [f"x = {v}" for v in numeric_distractors(rng, x, 5)])


def kmmlu_percent(rng):
    base = rng.choice([200, 250, 400, 500, 800, 1200, 1500, 2000, 2500, 4000])
    pct = rng.choice([5, 10, 15, 20, 25, 30, 40, 60, 75])
    value = base * pct // 100
    return mc_item(rng, "수학", f"{base}의 {pct}%는 얼마인가?", str(value),
                   [str(v) for v in numeric_distractors(rng, value, max(5, value // 4))])


# ---------------------------------------------------------------------------------------------
# haerae-mini: Korean vocabulary, idioms and everyday knowledge.

PROVERBS = [
    ("가는 말이 고와야", "오는 말이 곱다"), ("낮말은 새가 듣고", "밤말은 쥐가 듣는다"),
    ("원숭이도", "나무에서 떨어진다"), ("소 잃고", "외양간 고친다"), ("세 살 버릇", "여든까지 간다"),
    ("고래 싸움에", "새우 등 터진다"), ("발 없는 말이", "천 리 간다"),
    ("백지장도", "맞들면 낫다"), ("돌다리도", "두들겨 보고 건너라"), ("등잔 밑이", "어둡다"),
    ("빈 수레가", "요란하다"), ("하늘이 무너져도", "솟아날 구멍이 있다"),
    ("호랑이도 제 말 하면", "온다"), ("공든 탑이", "무너지랴"), ("아니 땐 굴뚝에", "연기 날까"),
    ("열 번 찍어", "안 넘어가는 나무 없다"), ("작은 고추가", "맵다"),
    ("바늘 도둑이", "소도둑 된다"), ("믿는 도끼에", "발등 찍힌다"),
    ("서당 개 삼 년이면", "풍월을 읊는다"), ("윗물이 맑아야", "아랫물이 맑다"),
    ("개구리 올챙이", "적 생각 못 한다"), ("사공이 많으면", "배가 산으로 간다"),
    ("똥 묻은 개가", "겨 묻은 개 나무란다"), ("뛰는 놈 위에", "나는 놈 있다"),
    ("미운 아이", "떡 하나 더 준다"), ("꿩 대신", "닭"), ("우물을 파도", "한 우물을 파라"),
    ("말 한마디에", "천 냥 빚을 갚는다"), ("콩 심은 데 콩 나고", "팥 심은 데 팥 난다"),
]

IDIOMS = [
    ("일석이조", "한 가지 일로 두 가지 이익을 얻음"),
    ("동문서답", "묻는 말에 전혀 엉뚱한 대답을 함"),
    ("과유불급", "정도를 지나침은 미치지 못함과 같음"),
    ("다다익선", "많으면 많을수록 더 좋음"),
    ("역지사지", "처지를 바꾸어서 생각하여 봄"),
    ("온고지신", "옛것을 익히고 그것을 미루어서 새것을 앎"),
    ("새옹지마", "인생의 길흉화복은 변화가 많아서 예측하기 어려움"),
    ("금상첨화", "좋은 일 위에 또 좋은 일이 더하여짐"),
    ("설상가상", "난처한 일이나 불행한 일이 잇따라 일어남"),
    ("죽마고우", "어릴 때부터 같이 놀며 자란 벗"),
    ("유비무환", "미리 준비가 되어 있으면 걱정할 것이 없음"),
    ("자업자득", "자기가 저지른 일의 결과를 자기가 받음"),
    ("작심삼일", "단단히 먹은 마음이 사흘을 가지 못함"),
    ("청출어람", "제자나 후배가 스승이나 선배보다 나음"),
    ("대기만성", "크게 될 사람은 늦게 이루어짐"),
    ("이심전심", "마음과 마음으로 서로 뜻이 통함"),
    ("고진감래", "고생 끝에 즐거움이 옴"),
    ("타산지석", "다른 사람의 하찮은 언행도 자기 수양에 도움이 될 수 있음"),
    ("사필귀정", "모든 일은 반드시 바른길로 돌아감"),
    ("우공이산", "어떤 일이든 꾸준히 하면 반드시 이룰 수 있음"),
    ("마이동풍", "남의 말을 귀담아듣지 아니하고 지나쳐 흘려버림"),
    ("오비이락", "아무 관계 없이 한 일이 공교롭게 다른 일과 때가 같아 의심을 받음"),
]

SPELLING = [  # (standard, common misspelling)
    ("왠지", "웬지"), ("며칠", "몇일"), ("설거지", "설겆이"), ("금세", "금새"),
    ("역할", "역활"), ("어이없다", "어의없다"), ("희한하다", "희안하다"), ("굳이", "구지"),
    ("오랜만에", "오랫만에"), ("깨끗이", "깨끗히"), ("일일이", "일일히"), ("베개", "배게"),
    ("찌개", "찌게"), ("눈살", "눈쌀"), ("떡볶이", "떡볶기"), ("곰곰이", "곰곰히"),
    ("육개장", "육계장"), ("설렘", "설레임"), ("도대체", "도데체"), ("결재 서류", "결제 서류"),
    ("웬만하면", "왠만하면"), ("할게요", "할께요"), ("되뇌다", "되뇌이다"), ("얽히고설키다", "얽히고섥히다"),
]

PROVINCE_SEATS = [
    ("경기도", "수원시"), ("강원특별자치도", "춘천시"), ("충청북도", "청주시"),
    ("충청남도", "홍성군"), ("전북특별자치도", "전주시"), ("전라남도", "무안군"),
    ("경상북도", "안동시"), ("경상남도", "창원시"), ("제주특별자치도", "제주시"),
]

NATIONAL_DAYS = [
    ("삼일절", "3월 1일"), ("어린이날", "5월 5일"), ("현충일", "6월 6일"), ("제헌절", "7월 17일"),
    ("광복절", "8월 15일"), ("개천절", "10월 3일"), ("한글날", "10월 9일"),
]

COUNTING_UNITS = [  # (thing, unit, how many)
    ("고등어", "손", "2마리"), ("오징어", "축", "20마리"), ("달걀", "판", "30개"),
    ("마늘", "접", "100개"), ("김", "톳", "100장"), ("북어", "쾌", "20마리"),
    ("바늘", "쌈", "24개"), ("조기", "두름", "20마리"),
]


def haerae_fixed(rng):
    items = []
    endings = [e for _, e in PROVERBS]
    starts = [s for s, _ in PROVERBS]
    for start, end in PROVERBS:
        items.append(mc_item(rng, "속담", f"다음 속담의 빈칸에 들어갈 말로 알맞은 것은?\n"
                             f"'{start} ____'", end, endings))
        items.append(mc_item(rng, "속담", f"다음 중 '… {end}'의 앞부분으로 알맞은 것은?",
                             start, starts))
    words = [w for w, _ in IDIOMS]
    meanings = [m for _, m in IDIOMS]
    for word, meaning in IDIOMS:
        items.append(mc_item(rng, "사자성어", f"사자성어 '{word}'의 뜻으로 알맞은 것은?",
                             meaning, meanings))
        items.append(mc_item(rng, "사자성어", f"'{meaning}'{particle(meaning, '을', '를')} 뜻하는 사자성어는?",
                             word, words))
    wrong = [w for _, w in SPELLING]
    right = [r for r, _ in SPELLING]
    for correct, misspelled in SPELLING:
        items.append(mc_item(rng, "맞춤법", "다음 중 한글 맞춤법에 맞게 쓴 것은?", correct, wrong))
        items.append(mc_item(rng, "맞춤법", "다음 중 한글 맞춤법에 어긋나는 것은?", misspelled, right))
    seats = [s for _, s in PROVINCE_SEATS] + ["원주시", "천안시", "목포시", "포항시", "김해시"]
    for province, seat in PROVINCE_SEATS:
        items.append(mc_item(rng, "지리", f"{province}의 도청 소재지는?", seat, seats))
    dates = [d for _, d in NATIONAL_DAYS] + ["4월 5일", "6월 25일", "10월 1일"]
    for day, date in NATIONAL_DAYS:
        items.append(mc_item(rng, "생활 문화", f"{josa(day, '은', '는')} 몇 월 며칠인가?", date, dates))
    amounts = [a for _, _, a in COUNTING_UNITS] + ["10마리", "50개", "12개", "40장"]
    for thing, unit, amount in COUNTING_UNITS:
        items.append(mc_item(rng, "어휘", f"{thing} 한 {josa(unit, '은', '는')} 얼마를 이르는가?",
                             amount, amounts))
    return items


def haerae_native_sum(rng):
    a, b = rng.randint(1, 60), rng.randint(1, 39)
    total = a + b
    return mc_item(rng, "어휘",
                   f"고유어 수사 '{native_number(a)}'에 '{native_number(b)}'"
                   f"{particle(native_number(b), '을', '를')} 더하면?",
                   native_number(total),
                   [native_number(v) for v in numeric_distractors(rng, total, 6) if 1 <= v <= 99]
                   + [native_number(min(99, total + 10)), native_number(max(1, total - 10))])


def haerae_native_read(rng):
    n = rng.randint(11, 99)
    word = native_number(n)
    return mc_item(rng, "어휘", f"고유어 수사 '{word}'{particle(word, '을', '를')} 숫자로 나타내면?",
                   str(n), [str(v) for v in numeric_distractors(rng, n, 9) if v > 0]
                   + [str(n + 10 if n < 90 else n - 20)])


# ---------------------------------------------------------------------------------------------
# gsm8k-mini: grade-school word problems with an integer answer.


def gsm_apples(rng):
    boxes, per_box, eaten = rng.randint(3, 12), rng.randint(6, 24), rng.randint(2, 15)
    return (f"A grocer has {boxes} boxes with {per_box} apples in each box. "
            f"Customers buy {eaten} apples. How many apples are left?", boxes * per_box - eaten)


def gsm_wages(rng):
    rate, hours, days = rng.randint(11, 35), rng.randint(3, 9), rng.randint(2, 6)
    bonus = rng.choice([0, 20, 25, 40, 50])
    tail = f" and gets a ${bonus} bonus" if bonus else ""
    return (f"Mina earns ${rate} an hour. She works {hours} hours a day for {days} days{tail}. "
            f"How many dollars does she earn in total?", rate * hours * days + bonus)


def gsm_speed(rng):
    speed, hours = rng.randint(40, 95), rng.randint(2, 7)
    stop = rng.randint(10, 60)
    return (f"A train travels at {speed} km per hour for {hours} hours, then another {stop} km "
            f"to the station. How many kilometers does it travel?", speed * hours + stop)


def gsm_shares(rng):
    friends = rng.randint(3, 8)
    each = rng.randint(4, 25)
    left = rng.randint(0, friends - 1)
    total = friends * each + left
    return (f"Jun has {total} stickers. He gives the same number to each of his {friends} friends, "
            f"as many as he can, and keeps the rest. How many stickers does each friend get?", each)


def gsm_discount(rng):
    # Multiples of 20, so every discount below comes to whole dollars.
    price = rng.choice([40, 60, 80, 120, 160, 200, 240, 300, 360, 500])
    pct = rng.choice([10, 20, 25, 30, 50])
    qty = rng.randint(2, 5)
    assert price * (100 - pct) % 100 == 0
    return (f"A jacket costs ${price}. During a sale every jacket is {pct}% off. "
            f"How much do {qty} jackets cost during the sale, in dollars?",
            qty * price * (100 - pct) // 100)


def gsm_pages(rng):
    # At most 160 pages read so far, fewer than any book has: something is always left.
    pages, per_day, done = rng.randint(200, 480), rng.randint(12, 40), rng.randint(1, 4)
    read = per_day * done
    remaining = pages - read
    days = -(-remaining // per_day)
    return (f"A book has {pages} pages. Seo-yeon reads {per_day} pages a day and has read for "
            f"{done} days. If she keeps the same pace, how many more days does she need to "
            f"finish the book?", days)


def gsm_age(rng):
    now, gap, years = rng.randint(6, 15), rng.randint(20, 35), rng.randint(2, 12)
    return (f"Hana is {now} years old and her father is {gap} years older than her. "
            f"How old will her father be in {years} years?", now + gap + years)


def gsm_garden(rng):
    length, width = rng.randint(5, 30), rng.randint(3, 20)
    cost = rng.randint(2, 9)
    return (f"A rectangular garden is {length} m long and {width} m wide. A fence costs ${cost} "
            f"per meter. How many dollars does it cost to fence the whole garden?",
            2 * (length + width) * cost)


GSM_TEMPLATES = [gsm_apples, gsm_wages, gsm_speed, gsm_shares, gsm_discount, gsm_pages, gsm_age,
                 gsm_garden]


def gsm_generators():
    def wrap(template):
        def generate(rng):
            question, answer = template(rng)
            return {"subject": "arithmetic", "question": question, "answer": answer}
        return generate
    return [wrap(t) for t in GSM_TEMPLATES]


# ---------------------------------------------------------------------------------------------
# click-mini: Korean culture and language.

ANTONYM_ADJECTIVES = [
    ("크다", "작다"), ("높다", "낮다"), ("길다", "짧다"), ("넓다", "좁다"), ("밝다", "어둡다"),
    ("무겁다", "가볍다"), ("두껍다", "얇다"), ("빠르다", "느리다"), ("뜨겁다", "차갑다"),
    ("깊다", "얕다"), ("쉽다", "어렵다"), ("기쁘다", "슬프다"), ("굵다", "가늘다"),
    ("부지런하다", "게으르다"),
]
ANTONYM_NOUNS = [
    ("입학", "졸업"), ("출발", "도착"), ("수입", "수출"), ("승리", "패배"), ("공격", "수비"),
    ("증가", "감소"), ("찬성", "반대"), ("긍정", "부정"), ("원인", "결과"), ("시작", "끝"),
    ("질문", "대답"),
]

HONORIFICS = [
    ("밥", "진지"), ("집", "댁"), ("나이", "연세"), ("이름", "성함"), ("말", "말씀"),
    ("자다", "주무시다"), ("먹다", "드시다"), ("있다", "계시다"), ("아프다", "편찮으시다"),
    ("생일", "생신"), ("병", "병환"), ("주다", "드리다"), ("묻다", "여쭙다"),
]

CIVICS = [
    ("대한민국 대통령의 임기는?", "5년", ["4년", "6년", "7년", "3년"]),
    ("대한민국 국회의원의 임기는?", "4년", ["5년", "6년", "3년", "2년"]),
    ("대한민국 대법관의 임기는?", "6년", ["4년", "5년", "10년", "8년"]),
    ("대한민국 지방자치단체장의 임기는?", "4년", ["5년", "3년", "6년", "2년"]),
    ("대한민국에서 공직선거의 선거권이 주어지는 나이는?", "만 18세", ["만 19세", "만 20세", "만 17세"]),
    ("훈민정음을 창제한 조선의 왕은?", "세종", ["태조", "정조", "영조", "세조"]),
    ("창제 당시 훈민정음의 글자 수는?", "28자", ["24자", "26자", "30자", "40자"]),
    ("설날 아침에 웃어른께 드리는 절은?", "세배", ["차례", "성묘", "문안", "폐백"]),
    ("추석에 빚어 먹는 대표적인 떡은?", "송편", ["가래떡", "시루떡", "인절미", "수리취떡"]),
    ("설날에 먹는 대표적인 음식은?", "떡국", ["송편", "팥죽", "오곡밥", "삼계탕"]),
    ("동지에 먹는 대표적인 음식은?", "팥죽", ["떡국", "송편", "냉면", "약밥"]),
    ("정월 대보름 아침에 호두나 땅콩 같은 견과류를 깨무는 풍습은?", "부럼",
     ["세배", "차례", "성묘", "복조리"]),
    ("대한민국의 화폐 단위는?", "원", ["전", "환", "냥", "달러"]),
    ("대한민국의 국화(國花)는?", "무궁화", ["진달래", "개나리", "벚꽃", "매화"]),
]

METROPOLITAN = ["부산", "대구", "인천", "광주", "대전", "울산"]
OTHER_CITIES = ["수원", "창원", "청주", "전주", "포항", "천안", "김해", "고양", "용인", "성남"]


def click_fixed(rng):
    items = []
    for group in (ANTONYM_ADJECTIVES, ANTONYM_NOUNS):
        # Distractors come from the same part of speech, or the odd one out gives it away.
        words = [w for pair in group for w in pair]
        for a, b in group:
            others = [w for w in words if w not in (a, b)]
            items.append(mc_item(rng, "어휘", f"'{a}'의 반의어로 알맞은 것은?", b, others))
            items.append(mc_item(rng, "어휘", f"'{b}'의 반의어로 알맞은 것은?", a, others))
    plain = [p for p, _ in HONORIFICS]
    honorific = [h for _, h in HONORIFICS]
    for p, h in HONORIFICS:
        items.append(mc_item(rng, "높임 표현", f"'{p}'의 높임말로 알맞은 것은?", h, honorific))
        items.append(mc_item(rng, "높임 표현", f"'{h}'{particle(h, '은', '는')} 어떤 말의 높임말인가?", p, plain))
    for question, answer, wrong in CIVICS:
        items.append(mc_item(rng, "사회·문화", question, answer, wrong))
    return items


def click_metropolitan_not(rng):
    metros = rng.sample(METROPOLITAN, 3)
    other = rng.choice(OTHER_CITIES)
    return mc_item(rng, "지리", "다음 중 광역시가 아닌 것은?", other, metros)


def click_metropolitan_is(rng):
    metro = rng.choice(METROPOLITAN)
    return mc_item(rng, "지리", "다음 중 광역시인 것은?", metro, rng.sample(OTHER_CITIES, 3))


def click_man_age(rng):
    # 만 나이 (international age), the legal standard since June 2023.
    born = datetime.date(rng.randint(1950, 2015), rng.randint(1, 12), rng.randint(1, 28))
    on = datetime.date(rng.randint(2023, 2025), rng.randint(1, 12), rng.randint(1, 28))
    age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return mc_item(rng, "법·제도",
                   f"{born.year}년 {born.month}월 {born.day}일에 태어난 사람의 "
                   f"{on.year}년 {on.month}월 {on.day}일 기준 만 나이는?",
                   f"{age}세", [f"{age + d}세" for d in (-1, 1, 2)])


HEAVENLY_STEMS = "갑을병정무기경신임계"
EARTHLY_BRANCHES = "자축인묘진사오미신유술해"
ZODIAC_ANIMALS = ["쥐", "소", "호랑이", "토끼", "용", "뱀", "말", "양", "원숭이", "닭", "개", "돼지"]


def ganji(year):
    # The 60-year cycle: year 4 CE was 갑자; e.g. 1592 -> 임진 (임진왜란), 2024 -> 갑진.
    return HEAVENLY_STEMS[(year - 4) % 10] + EARTHLY_BRANCHES[(year - 4) % 12]


def click_ganji(rng):
    year = rng.randint(1000, 2030)
    wrong = [ganji(year + d) for d in (-2, -1, 1, 2, 6, 12, -12)]
    return mc_item(rng, "역사·전통", f"{year}년의 간지(干支)는?", f"{ganji(year)}년",
                   [f"{w}년" for w in wrong])


def click_zodiac(rng):
    year = rng.randint(1950, 2030)
    animal = ZODIAC_ANIMALS[(year - 4) % 12]
    return mc_item(rng, "역사·전통", f"{year}년에 태어난 사람의 띠는? (양력 연도 기준)",
                   f"{animal}띠", [f"{a}띠" for a in ZODIAC_ANIMALS])


# ---------------------------------------------------------------------------------------------
# arith-mini: one sum or product per prompt, in the openai runner's `generate` format.

ARITH_FRAMES = [
    "Question: What is {expr}?\nAnswer:",
    "Compute {expr}. Give only the number.\nAnswer:",
    "계산하시오: {expr} =\n답:",
    "Seo-yeon types {expr} into a calculator. What does it show?\nAnswer:",
]


def arith_items(rng):
    items = []
    seen = set()
    while len(items) < SIZES["arith-mini"]:
        if rng.random() < 0.5:
            a, b, op = rng.randint(10, 999), rng.randint(10, 999), "+"
            value, subject = a + b, "addition"
        else:
            a, b, op = rng.randint(2, 99), rng.randint(2, 30), "*"
            value, subject = a * b, "multiplication"
        expr = f"{a} {op} {b}"
        prompt = rng.choice(ARITH_FRAMES).format(expr=expr)
        if prompt in seen:
            continue
        seen.add(prompt)
        items.append({"subject": subject, "prompt": prompt, "answer": str(value)})
    width = len(str(SIZES["arith-mini"]))
    return [{"id": f"arith-mini-{i:0{width}d}", **item} for i, item in enumerate(items)]


# ---------------------------------------------------------------------------------------------


def build_all():
    rng = random.Random(SEED)
    return {
        "kmmlu-mini": assemble(rng, "kmmlu-mini", kmmlu_fixed(rng),
                               [kmmlu_multiply, kmmlu_linear, kmmlu_percent]),
        "haerae-mini": assemble(rng, "haerae-mini", haerae_fixed(rng),
                                [haerae_native_sum, haerae_native_read]),
        "gsm8k-mini": assemble(rng, "gsm8k-mini", [], gsm_generators()),
        "click-mini": assemble(rng, "click-mini", click_fixed(rng),
                               [click_metropolitan_not, click_metropolitan_is, click_man_age,
                                click_ganji, click_zodiac]),
        # A generator of its own, so adding it left the other four files unchanged.
        "arith-mini": arith_items(random.Random(SEED + 1)),
    }


def render(items):
    return "".join(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for item in items)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the committed files instead of writing them")
    args = parser.parse_args()
    stale = []
    DATA_DIR.mkdir(exist_ok=True)
    for name, items in build_all().items():
        assert len(items) == SIZES[name], name
        path = DATA_DIR / f"{name}.jsonl"
        text = render(items)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(items)} items, {len(text.encode('utf-8'))} bytes)")
    if stale:
        print("out of date (run examples/demo/make_data.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
