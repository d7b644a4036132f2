"""Task stems for generated training instructions, written for this project (not from IFEval).

Each line of a genre block is one task stem: an imperative request without any formatting or
length requirement (those come from the constraint taxonomy, `musc_jax.data.instructions`).
Genres whose stems are yes/no questions are listed in `QUESTION_GENRES`; only they may take the
"answer with one of: My answer is yes/no/maybe" constraint.

Writing rules we followed: everyday and specialist topics mixed, no named real people, no
stems that ask for a specific length, case, format or keyword, and nothing copied or
paraphrased from an evaluation set (the near-duplicate check in the tests enforces the last).
"""

from __future__ import annotations

QUESTION_GENRES = ("yes_no",)

_BLOCKS: dict[str, str] = {
    "email": """
Write an email to a neighbour asking them to water your tomato plants while you are away for a week
Write an email to your landlord reporting that the kitchen tap has been dripping for days
Write an email to a teammate who missed a deadline, asking what help they need
Write an email inviting the parents of a school class to a weekend clean-up of the playground
Write an email to a bakery asking whether they can make a cake without nuts for a birthday
Write an email declining a job offer politely while leaving the door open for the future
Write an email to a cycling club proposing a new Sunday route along the canal
Write an email to a hotel asking to move a booking by two days because of a cancelled train
Write an email thanking a volunteer who ran the village library for ten years
Write an email to a supplier complaining that a shipment of chairs arrived scratched
Write an email to a professor asking for feedback on a rejected thesis proposal
Write an email reminding flatmates that the rent for next month is due on Friday
Write an email to customers announcing that a small bookshop is moving to a new street
Write an email to a former colleague asking whether they would be a reference for you
Write an email to a plumber asking for a quote to replace an old boiler
Write an email to a town council asking for a pedestrian crossing near the primary school
""",
    "story": """
Write a short story about a lighthouse keeper who finds a message from her future self
Write a short story about a robot vacuum that decides to explore the garden
Write a story about two rival ice-cream vans on the same beach during a heat wave
Write a story set on a night train in which every passenger is hiding the same secret
Write a story about a girl who can hear what houseplants think
Write a story about a retired sailor teaching his grandson to tie knots
Write a story about the last bookshop on a planet where everyone reads on screens
Write a fable about a tortoise who opens a repair shop for broken clocks
Write a story about a chef who loses her sense of taste the day before a competition
Write a short mystery about a missing trophy at a village dog show
Write a story about a city where it rains only on Tuesdays
Write a story about a lost umbrella passed from stranger to stranger
Write a bedtime story about a small cloud that is afraid of thunder
Write a story about a beekeeper who discovers her bees are spelling out words
Write a story about a boy who trades his shadow for a bicycle
Write a story told from the point of view of an old wooden bridge
""",
    "poem": """
Write a poem about the smell of rain on hot pavement
Write a poem about a grandmother's sewing box
Write a poem celebrating the first snowfall of the year
Write a poem about waiting for a bus at dawn
Write a poem from the point of view of a kite tangled in a tree
Write a poem about the sound of a washing machine on a quiet Sunday
Write a poem about a harbour town after the fishing boats leave
Write a poem about learning to ride a bicycle
Write a poem about a lemon tree growing on a balcony
Write a poem comparing friendship to a long walk
Write a poem about an empty classroom in the summer holidays
Write a poem about the moon seen from a hospital window
Write a poem about a cat that sleeps on a warm laptop
Write a poem about autumn leaves blocking a drain
Write a poem about a street market closing at night
""",
    "song": """
Write song lyrics about a road trip with a broken radio
Write song lyrics for a lullaby about stars that keep watch over a farm
Write a chorus for a song about missing the train home
Write song lyrics about a small town that floods every spring
Write a jingle for a family-run laundry service
Write a sea shanty about sailors who cannot find the fish
Write song lyrics about making peace with a sibling
Write a campfire song about a bear who loves pancakes
Write song lyrics celebrating the end of exams
Write a protest song about a park being turned into a car park
Write a country song about a pickup truck that will not start
Write a love song addressed to an old typewriter
""",
    "essay": """
Write an essay on whether cities should ban cars from their centres
Write an essay about the value of learning a musical instrument as an adult
Write an essay arguing that public libraries matter more now than ever
Write an essay on the pros and cons of working from home
Write an essay about how board games teach children to lose gracefully
Write an essay on why people keep diaries
Write an essay examining whether homework should be abolished in primary schools
Write an essay about the role of bridges in connecting communities
Write an essay on the importance of sleep for teenagers
Write an essay about what makes a neighbourhood feel safe
Write an essay discussing whether zoos still have a purpose
Write an essay on the cultural meaning of sharing a meal
Write an essay about repairing things instead of replacing them
Write an essay on how weather shapes national character
Write an essay arguing for a four-day school week
""",
    "explain_science": """
Explain why the sky turns red at sunset
Explain how vaccines train the immune system
Explain why ice floats on water
Explain how a rainbow forms
Explain what causes the seasons on Earth
Explain how bees communicate the location of flowers
Explain why bread rises when it is baked
Explain how tides are connected to the moon
Explain what photosynthesis does for a plant
Explain why metal feels colder than wood at the same temperature
Explain how earthquakes are measured
Explain why some animals hibernate through the winter
Explain how a compass finds north
Explain what a black hole is to a curious teenager
Explain why onions make people cry
Explain how coral reefs are built
""",
    "explain_tech": """
Explain how a password manager keeps passwords safe
Explain what a computer's cache is and why it speeds things up
Explain how GPS works out where a phone is
Explain the difference between a virus and a worm in computer security
Explain how a search engine decides which pages to show first
Explain what an API is to someone who runs a small shop
Explain how noise-cancelling headphones work
Explain how a QR code stores information
Explain what cloud storage is and what can go wrong with it
Explain how electric cars recover energy when they brake
Explain why software needs updates
Explain how a microwave oven heats food
Explain what version control is and why programmers use it
Explain how a touchscreen knows where a finger is
Explain the idea of encryption using an everyday analogy
""",
    "how_to": """
Describe how to repot a houseplant without damaging its roots
Give instructions for changing a flat tyre on a bicycle
Describe how to prepare for a job interview at a small company
Give step-by-step directions for making a paper boat
Describe how to start a vegetable garden on a balcony
Give instructions for cleaning a cast-iron pan
Describe how to plan a budget for a first month at university
Give advice on how to learn the names of everyone at a new job
Describe how to teach a puppy to walk calmly on a lead
Give instructions for packing a suitcase for a week of hiking
Describe how to write a thank-you card that does not sound generic
Give instructions for setting up a simple compost bin
Describe how to organise a neighbourhood book swap
Give tips for taking better photos with a phone at night
Describe how to fix a squeaky door hinge
Describe how to make a weekly meal plan for a family of four
""",
    "recipe": """
Write a recipe for a lentil soup that can be made in one pot
Write a recipe for pancakes using only five ingredients
Write a recipe for a picnic salad that travels well
Write a recipe for a vegetarian chilli for a crowd
Write a recipe for a quick breakfast that can be eaten on the bus
Write a recipe for homemade lemonade with less sugar
Write a recipe for roasted vegetables with a honey glaze
Write a recipe for a birthday cake that children can help decorate
Write a recipe for a fish stew from a coastal village
Write a recipe for flatbread cooked in a frying pan
Write a recipe for a warming winter drink without alcohol
Write a recipe for a packed lunch for a long train journey
""",
    "product": """
Write a product description for a water bottle that reminds you to drink
Write a product description for a foldable electric scooter
Write a product description for a board game about building lighthouses
Write an advertisement for a repair café that fixes toasters and lamps
Write a product description for a backpack designed for cyclists
Write an advertisement for a language school that teaches through cooking
Write a product description for a smart plant pot that measures soil moisture
Write an advertisement for a mobile library van visiting rural villages
Write a product description for handmade soap scented with pine
Write an advertisement for a dog-walking service run by students
Write a product description for a desk lamp that mimics daylight
Write a pitch for an app that helps neighbours share tools
Write a product description for a pair of hiking boots made from recycled plastic
Write an advertisement for a small cinema showing old films
Write a pitch for a subscription box of seeds for urban gardeners
""",
    "review": """
Write a review of a fictional café that serves only soup
Write a review of a museum exhibition about the history of maps
Write a review of a budget hotel near a train station
Write a review of a children's play about a lost penguin
Write a review of a second-hand bicycle you bought online
Write a review of a hiking trail along a windy coastline
Write a review of a concert in a small church
Write a review of a new bus route in your town
Write a review of a cookbook for students
Write a review of a board game played with four friends
Write a review of a pair of cheap headphones after a month of use
Write a review of a community swimming pool
""",
    "dialogue": """
Write a dialogue between a baker and a customer who wants a cake shaped like a castle
Write a dialogue between two astronauts deciding what to name a new crater
Write a conversation between a tourist and a local who gives confusing directions
Write a dialogue between a teenager and a parent about getting a first phone
Write a scene in which two old friends meet by chance at an airport
Write a dialogue between a librarian and a child looking for a book about volcanoes
Write a conversation between a mechanic and a driver whose car makes a strange noise
Write a dialogue between a cat and a dog arguing over the sunniest spot
Write a scene in which a shopkeeper tries to sell an umbrella on a sunny day
Write a dialogue between a coach and a player who wants to quit the team
Write a conversation between two gardeners competing for the biggest pumpkin
Write a dialogue between a time traveller and a confused museum guard
""",
    "speech": """
Write a speech for the opening of a new community garden
Write a toast for a sister's wedding
Write a speech welcoming new students on their first day at school
Write a farewell speech for a colleague retiring after thirty years
Write a speech encouraging a town to take part in a litter-picking day
Write a short acceptance speech for a prize in a baking contest
Write a speech for a team captain before a final match
Write a speech thanking the firefighters who saved a village hall
Write a graduation speech about the value of mistakes
Write a speech to launch a charity run for a children's hospital
Write a eulogy for a much-loved family dog
Write a speech introducing a guest author at a library event
""",
    "social": """
Write a social media post announcing the opening of a neighbourhood bakery
Write a post for a hiking club inviting new members to a sunrise walk
Write a post celebrating a local football team's promotion
Write a social media post reminding people to check on elderly neighbours during a heat wave
Write a post for a museum announcing free entry on the first Sunday of the month
Write a post sharing tips for saving energy at home in winter
Write a social media post for a shelter looking for volunteers to walk dogs
Write a post announcing the results of a school's charity bake sale
Write a post introducing a new member of staff at a small clinic
Write a social media post advertising a second-hand clothes swap
Write a post asking followers to suggest a name for a new café cat
Write a post about a lost set of keys found in the park
""",
    "business": """
Write a memo to staff about a new policy for booking meeting rooms
Write a short business plan for a mobile bicycle repair service
Write a proposal to start a weekly farmers' market in a school car park
Write a mission statement for a company that makes wooden toys
Write a customer apology for a website outage during a sale
Write a job advertisement for a part-time gardener at a care home
Write an announcement that an office will close early before a public holiday
Write a proposal for a four-week trial of flexible working hours
Write a plan for reducing paper use in a small accounting firm
Write a summary of the risks of opening a café in a tourist town
Write a pitch to investors for a company that rents out camping gear
Write guidelines for employees who answer customer phone calls
Write a welcome message for new customers of an internet provider
Write a brief report on why sales of umbrellas rose last quarter
""",
    "travel": """
Write a travel guide entry for a fictional island famous for its lighthouses
Describe a perfect weekend in a mountain village in winter
Write advice for someone travelling alone by train for the first time
Write a description of a busy night market for a travel magazine
Write a plan for a three-day cycling trip along a river
Describe what to pack for a week-long camping trip by a lake
Write a travel diary entry about missing the last ferry
Write a guide to visiting a big city on a small budget
Describe a walking tour of an old harbour town
Write tips for staying healthy on a long flight
Write a postcard home from a rainy seaside holiday
Write a travel guide entry about a desert town with a famous well
""",
    "history": """
Describe daily life in a medieval market town
Explain how the printing press changed the way people learned
Describe what a journey on a steam train was like for ordinary passengers
Explain why ancient cities were often built near rivers
Describe the work of lighthouse keepers before automation
Explain how people kept food fresh before refrigerators
Describe how sailors navigated before satellites
Explain why canals were important during the industrial age
Describe how letters were delivered before there was a postal service
Explain the history of the bicycle in a way a child would enjoy
Describe how windmills were used to grind grain
Explain how public libraries first came to exist
""",
    "education": """
Write a lesson plan for teaching fractions with pizza slices
Write a quiz for ten-year-olds about the solar system
Write a study guide for a test on the water cycle
Write a worksheet introduction about the parts of a flower
Write a set of discussion questions about a novel set at sea
Write a lesson plan on how to spot misleading advertisements
Write an activity for teaching children to measure rainfall
Write a glossary of terms for a beginner's course in photography
Write a revision plan for a student with three exams in one week
Write a classroom activity about recycling for six-year-olds
Write instructions for a science experiment with vinegar and baking soda
Write a set of flashcard questions about the human skeleton
Write a short lesson on how to read a bus timetable
""",
    "health": """
Write advice for someone who wants to start running after a long break
Describe a simple stretching routine for people who sit at a desk all day
Write tips for drinking more water during a working day
Write a guide to getting better sleep during exam season
Describe how to prepare a healthy lunch box for a child
Write advice for staying active during a rainy week
Write tips for reducing screen time in the evening
Write a beginner's guide to swimming for fitness
Describe a calm morning routine for someone who feels rushed
Write advice for carrying heavy shopping bags without hurting your back
Write tips for staying warm and healthy on winter walks
Write a plan for a family to eat more vegetables
""",
    "advice": """
Write advice for a student who is nervous about giving a class presentation
Give advice to someone moving to a new city where they know nobody
Write advice for a teenager saving money for a first guitar
Give advice to a new manager leading a team for the first time
Write advice for someone whose best friend is moving abroad
Give advice to a person who wants to start volunteering
Write advice for a family choosing a first pet
Give advice on how to disagree with a friend without hurting them
Write advice for someone learning to cook for the first time
Give advice to a parent whose child is afraid of the dark
Write advice for someone who keeps forgetting birthdays
Give advice to a shy person going to a big party
Write advice for a runner preparing for a first race
Give advice to a small shop owner competing with online stores
""",
    "description": """
Describe a lighthouse during a storm
Describe the inside of an old clock repair shop
Describe a busy kitchen in a restaurant on a Saturday night
Describe a forest in the hour before sunrise
Describe the view from the top of a tall apartment building
Describe a school playground after the last bell
Describe a train station at midnight
Describe a fishing village on a foggy morning
Describe the workshop of a violin maker
Describe a crowded beach on the hottest day of the year
Describe a greenhouse full of tropical plants
Describe an attic full of forgotten toys
Describe a small island seen from a passing ferry
Describe a city park in the middle of autumn
""",
    "comparison": """
Compare travelling by train and by plane for a journey of five hundred kilometres
Compare keeping a cat and keeping a dog in a small flat
Compare learning from books and learning from videos
Compare living in a big city and living in a village
Compare paper notebooks and note-taking apps
Compare cycling and walking as ways to get to work
Compare summer holidays at the beach and in the mountains
Compare renting a home and buying one for a young couple
Compare cooking at home and eating out on a tight budget
Compare team sports and individual sports for children
Compare electric kettles and stovetop kettles
Compare studying in the morning and studying at night
""",
    "definition": """
Define the word resilience and give an everyday example
Explain what inflation means to a twelve-year-old
Define the term ecosystem using a pond as an example
Explain what a metaphor is to someone learning English
Define what a budget is and why households use one
Explain the meaning of the phrase opportunity cost
Define biodiversity and say why it matters
Explain what democracy means using a school council as an example
Define what a habit is and how one forms
Explain what interest on a savings account is
Define the term renewable energy
Explain what empathy means to a young child
""",
    "list": """
List ideas for a rainy afternoon with young children
List ways to make a small bedroom feel bigger
List questions to ask before adopting a rescue dog
List things to check before a long car journey
List ideas for a birthday present that costs nothing
List ways a school could use less plastic
List names for a bakery that sells only bread
List activities for a team-building day in a park
List ways to practise a new language every day
List ideas for a community project in a small village
List things to do during a power cut in the evening
List ways to make a garden friendlier to birds
""",
    "humor": """
Write a funny complaint from a cat to its owner about the new vacuum cleaner
Write a joke about a penguin who works in an office
Write a humorous weather forecast for a town where it rains soup
Write a funny letter from a sock explaining why it ran away from its pair
Write a comic scene about a wizard who cannot remember his spells
Write a humorous job advertisement for a dragon seeking a castle guard
Write a funny set of instructions for surviving a family holiday
Write a silly news report about a goose elected as mayor
Write a humorous review of a chair from the point of view of a cat
Write a funny note from a toaster asking for a day off
Write a riddle whose answer is a shadow
Write a comic diary entry of a houseplant on holiday with its owner
""",
    "letter": """
Write a letter to your future self to be opened in ten years
Write a letter from a child to a grandparent who lives far away
Write a letter of recommendation for a hard-working intern at a garden centre
Write a letter to a local newspaper about noise from a building site
Write a thank-you letter to a teacher who made maths interesting
Write a cover letter for a job as a museum guide
Write a letter to a pen pal describing your hometown
Write a letter apologising to a neighbour for a loud party
Write a letter from a ship's captain to the owners about a delayed voyage
Write a letter to a bank asking to close an old account
Write a letter inviting a famous chef to visit a school kitchen
Write a letter from a soldier in the past to his family at harvest time
""",
    "news": """
Write a news report about a village that built its own wind turbine
Write a news article about a school that planted a hundred trees
Write a news report about a rare bird spotted in a city centre
Write a news story about a library that returned a book overdue by fifty years
Write a news report about a festival cancelled because of strong winds
Write a news article about a new ferry route between two islands
Write a news report about a bakery giving away bread after a power cut
Write a news story about teenagers who repaired a historic bench
Write a news article about a marathon run in fancy dress for charity
Write a news report about a town that switched its street lights to solar power
Write a news report about a lost dog that found its way home across a city
Write a news article about a record-breaking pumpkin at a county fair
""",
    "planning": """
Write a schedule for a one-day family trip to a science museum
Write an agenda for a first meeting of a new book club
Plan a surprise party for a friend who dislikes surprises
Write a plan for a week of meals using only seasonal vegetables
Plan a fundraising evening for a school orchestra
Write a training plan for a beginner who wants to walk ten kilometres
Plan a day of activities for a group of exchange students
Write a moving-day checklist for a family with two children
Plan a weekend workshop on repairing bicycles
Write a study timetable for learning to drive
Plan a garden party for a grandparent's eightieth birthday
Write a plan to tidy a garage in one weekend
""",
    "reflection": """
Write a diary entry about the first day at a new job
Write a reflection on what a long walk in the rain taught you
Write a personal story about learning to swim late in life
Write about a time you changed your mind about something important
Write a reflection on the best advice you ever received
Write a diary entry from someone who has just moved to the countryside
Write a personal essay on what home means to you
Write about a small act of kindness that made a big difference
Write a reflection on a year spent learning to play chess
Write a diary entry from a volunteer on the first day at an animal shelter
Write about an object you own that has an unusual story
Write a reflection on what makes a good teacher
""",
    "yes_no": """
Is it worth learning to touch-type as an adult? Give your opinion
Should children be allowed to choose their own bedtime? Give your view
Is it a good idea to buy a second-hand laptop for university? Explain briefly
Can a small garden really help wild bees? Give your answer
Should a town replace its old swimming pool with a new library? Decide
Is cycling to work in winter sensible in a rainy city? Say what you think
Would a four-day working week make offices more productive? Give your opinion
Is it safe to swim in a lake right after a thunderstorm? Answer the question
Should schools teach cooking as a main subject? Give your view
Is a tablet a good first device for a young child? Decide and explain
Can you learn to paint well without taking any classes? Give your answer
Should restaurants show the calories of every dish on the menu? Say what you think
""",
}


def _parse(blocks: dict[str, str]) -> tuple[tuple[str, str], ...]:
    out = []
    for genre, block in blocks.items():
        out.extend((genre, line.strip()) for line in block.strip().splitlines() if line.strip())
    return tuple(out)


STEMS: tuple[tuple[str, str], ...] = _parse(_BLOCKS)   # (genre, stem text)
GENRES: tuple[str, ...] = tuple(_BLOCKS)
