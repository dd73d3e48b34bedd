"""Download of the public pre-training corpus (``fedgen data fetch pretrain``): pinned upstream commits,
byte-identical files, SHA-256 checked (the corpus itself and its normalisation: :mod:`fedgen.data.corpus`)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

from fedgen.core.errors import DataError
from fedgen.data.checksums import sha256_file
from fedgen.data.corpus import _CHUNK, _pretrain_dir
from fedgen.data.download import stream_to_temp

#: Default host of the downloads; a URL is ``{base}/{repo}/{commit}/{path}`` (see :func:`fetch_pretrain`).
PRETRAIN_URL = "https://raw.githubusercontent.com"

_NLTK_PLAIN_COMMIT = "4dc39fbf6965509f7b74316eff239bd110a03b49"  # 2008-08-26, plain nltk_data/ files
_NLTK_ZIP_COMMIT = "c90be5e1b36a576057c8bef2ba948cafd28e863d"  # 2008-08-27, zipped nltk_data/corpora
_WIKITEXT_COMMIT = "f88ef50e902951e9d787d82fa9a6eddfed87f7d2"


class PretrainDownload(NamedTuple):
    """One download of :data:`PRETRAIN_MANIFEST` (provenance in ``pretrain/SOURCES.md``).

    Plain files (``member_dir`` is None): each ``files`` entry comes from ``{repo}/{commit}/{path}/{name}``.
    Zip archive: ``{repo}/{commit}/{path}`` is fetched once and member ``{member_dir}/{name}`` extracted.
    ``files`` holds (local name under ``pretrain/{local_dir}/``, SHA-256); ``renames`` maps a local name to
    its different remote name.
    """

    repo: str
    commit: str
    path: str
    member_dir: str | None
    local_dir: str
    files: tuple[tuple[str, str], ...]
    renames: tuple[tuple[str, str], ...] = ()


#: Every file listed in ``pretrain/SHA256SUMS``: where to get it and its SHA-256 (generated from the
#: canonical ``pretrain/SHA256SUMS`` and ``SOURCES.md``).
PRETRAIN_MANIFEST: tuple[PretrainDownload, ...] = (
    PretrainDownload(
        "nltk/nltk",
        _NLTK_PLAIN_COMMIT,
        "nltk_data/corpora/gutenberg",
        None,
        "gutenberg",
        (
            ("README.nltk-gutenberg", "791b8a01e866fb107e045c712e8421fc752b672218886c2b5ce71601db1e56ae"),
            ("austen-emma.txt", "71b0923d75fcf2f1faa897b22da8de8e2476d7478a2b22388eb58a3420e00215"),
            ("austen-persuasion.txt", "cec097657cbfeb62aafe178973f514fa07ab66a5e28ea025ebd5d51ca870e40f"),
            ("austen-sense.txt", "57b169c7cfa502896dee25bd66616f61cc1d21084caf31f015176ee46fda9718"),
            ("blake-poems.txt", "840897a66e23a47dd1fd56b864f421b2be0af074dc081244f7995bf26939eee9"),
            ("chesterton-ball.txt", "c6b6d4e8c09a3f49a09f37f4e47663d4d6f048b62d86c70ccafdfd8f27059a58"),
            ("chesterton-brown.txt", "67027976205b4b30e367c704807f56c8ffac3e8ea6037d993e57ab1fe28447ec"),
            ("chesterton-thursday.txt", "8b431a2a8db84089cd6f83fa66610c3b12c04114609df6e90137c0c58f2c5493"),
            ("melville-moby_dick.txt", "dc2466ee3c2e6e2ea1f86233d142e4b5578fdc1d6f0ca657bee7572202a980c7"),
            ("milton-paradise.txt", "49028a77c557de1459e96c026edbe72997be2d9015925f7baefb793cd6fe706f"),
            ("shakespeare-caesar.txt", "7c46bd32fc84d9596bcad55b61ec3c1a390239acb190b286422855aafc2774b3"),
            ("shakespeare-hamlet.txt", "1eceab7027ad7e0cc25c6b6aadcb2e6bb070395cb2085f775ac732d63d5db240"),
            ("shakespeare-macbeth.txt", "d4a204352cfe5924cbae76f764225d120e9f7617d39cb8c949dedd3f306353ac"),
            ("whitman-leaves.txt", "93ebaf1dccc8f1514b4b1c2f52e64e81829113fc58cff63fb51ada0c72f99c3e"),
        ),
        (("README.nltk-gutenberg", "README"),),
    ),
    PretrainDownload(
        "nltk/nltk",
        _NLTK_ZIP_COMMIT,
        "nltk_data/corpora/gutenberg.zip",
        "gutenberg",
        "gutenberg",
        (("bible-kjv.txt", "3f56c9f0bbc796312aacc5fcb49a799f5c5f729f00db3f86bff26319a93bfede"),),
    ),
    PretrainDownload(
        "nltk/nltk",
        _NLTK_ZIP_COMMIT,
        "nltk_data/corpora/inaugural.zip",
        "inaugural",
        "us-presidential-addresses/inaugural",
        (
            ("1789-Washington.txt", "dd7a7965c81147c7693a085555e05a6b304a6d79c91960d62a32450351b3ae9e"),
            ("1793-Washington.txt", "01dd6af804662d912d90039b160582de29282defdfa6526d255a15071df117a1"),
            ("1797-Adams.txt", "86395fff7e36efc9ff3f4a1bce6360a38ed0bb763fae68cadaab97a7bfb0f64b"),
            ("1801-Jefferson.txt", "a7e603d3cfb66f95580b53f8f8d45f397a48c1aebcc3bad6667be832aafd04df"),
            ("1805-Jefferson.txt", "85996fc16d7466c6ff3b2a545956ca9a968779dc9cd50cd784b972f3ee73f1cc"),
            ("1809-Madison.txt", "76a857741c69b14dff013a7ab647e752384a6b57cc50a927f7561e5f594699d6"),
            ("1813-Madison.txt", "a2ad32d9f98a313e98f93562cef97214b4d1f0b4cd2b43cc615455e1ca79c20a"),
            ("1817-Monroe.txt", "83162847f5e2258499ac9558e212ad2619fbffd7aed1ce4df0b4d4ca5dd18a75"),
            ("1821-Monroe.txt", "fd96a3282bdb37a369bb9d84823226a3e9fba598af5578fd7631055b02cb401f"),
            ("1825-Adams.txt", "4ff8a7833ee643d95ed5a3dc1b4dc11dc8618c0f3e2d51dcd3e6c420a7cf4716"),
            ("1829-Jackson.txt", "89115f200d992cf99b96eb5b8a3ddf6b321fce00f17701246380f3cc0e71a315"),
            ("1833-Jackson.txt", "4461c7b8f63f6c325acbbf596073e9e475d0c64137478cad9a993f3f504ec96a"),
            ("1837-VanBuren.txt", "9466fd68312266b38cf82abd2ad9a7c9b34c9961f673b53403ada83916fa814a"),
            ("1841-Harrison.txt", "5a61a4639b2de00db87c27169613ddb2fedad1b5c383e7447eef40b142b396ca"),
            ("1845-Polk.txt", "35470407862f262c279af7678466cc6966faf9ef063c21a4bdbfe22650a04b01"),
            ("1849-Taylor.txt", "3c56aa0dd8e395a57baa24a6962a15943ce6f4944baf85b9e2fcb0b99701f0d9"),
            ("1853-Pierce.txt", "08ea7e12999ebaf43d516ec51f1a04bf156de40e140af19f911b50d9dfb95614"),
            ("1857-Buchanan.txt", "0730dd953a6d5ccfda2ed18d7b7bf179bdd079bf3413b620c57beab38337dfab"),
            ("1861-Lincoln.txt", "2c7b11f0d57dfbc81f4ba26dcd1255f4397dd4c66f873d900203ca0fdd46ed1d"),
            ("1865-Lincoln.txt", "45fab6e488f059b77a4f05f95e641b5a86243fc964974e360e51cc9478c13980"),
            ("1869-Grant.txt", "1b2087583c1a385174234047af12dbbcfe7b357a4813fe26da017007327e2afb"),
            ("1873-Grant.txt", "8d27f5ebb317376a304a9c11feff4d5d39b22386267c63a721619282ded75c26"),
            ("1877-Hayes.txt", "d60351a40156effe1ee851d26d6dd258bc0014a36b67b5316f092b3e098cfef6"),
            ("1881-Garfield.txt", "d4a6ccc8c151c01d9dce785a6f223d6381a465809d581d53ab376594f83c1f6b"),
            ("1885-Cleveland.txt", "a1aba961370332f72e8d833d94ee480b0b59a6dc2e89ee40ab6736426aef3626"),
            ("1889-Harrison.txt", "46ab4ff8bb9f8869a1ca45569b39bc31ea12a0401436a0310402378077199536"),
            ("1893-Cleveland.txt", "c805ccbb61b2e513a9966f0462cef4b529dc936e87f35a1d146f2f071a236672"),
            ("1897-McKinley.txt", "86f96d99ee636b4060ee6d688a24cd6bee947fd154c8aefe94f8d3ad2afa5f83"),
            ("1901-McKinley.txt", "46b33934c1266a91a42a44542e5b7742ee4b9000d3d4c4abc7bba90cfbf76a38"),
            ("1905-Roosevelt.txt", "bd199980beba439915275b11c5e8ca23d25a3a65d5bf1f666d8b694729768bce"),
            ("1909-Taft.txt", "1b48e7a5f17c8457e393ad6c80bcda96ae8ae7c4fafc34fd012593825855b7ff"),
            ("1913-Wilson.txt", "edda23cd8b8557dcae46444ee2e2289eb5a6ab33f035de9368339c3dbdf676c4"),
            ("1917-Wilson.txt", "ab14086bc4bc2f599ab5a1d06dbd5c0014b8294c2fb116fb777f5307a547789c"),
            ("1921-Harding.txt", "80120e6dc1035c6070167febc39c1bed1c3d26634fdd6be8d87a89675dcbd319"),
            ("1925-Coolidge.txt", "edca412653352d908fcfd8abd7fdefa485b2717ba4fcd196f83c1d87a3d87157"),
            ("1929-Hoover.txt", "6b0fbe182f468dbe25b30282afd7cdf4e4288429c873f9f4bc510079fe4c8ce3"),
            ("1933-Roosevelt.txt", "8057a5f78197481249ba4c21eebc94a610dae84c86c6927b96d33899ce31bfe8"),
            ("1937-Roosevelt.txt", "7d337a12606cdb9c5ce0c7adbeab1be121b22925c04a5a881338e94dbd656b4d"),
            ("1941-Roosevelt.txt", "1944f0fda8c449af1086933ef917f32dbdb7431ebfdc3b8b599917ece4d6ba35"),
            ("1945-Roosevelt.txt", "05fe90f21718f7d68082d70237522ec4c2417f5ea62eb81da0aeb620392c0101"),
            ("1949-Truman.txt", "0de1bc7dc4ee274aeae4fd7302d482b89a1abdae1968c0452ca098ecfe0c8b2f"),
            ("1953-Eisenhower.txt", "1e90aa30dfecebd90d5d6348b4ce1dfdd219a8c7f986a5541b0ec7a530ffc94c"),
            ("1957-Eisenhower.txt", "fcaf780206362764d460359fea07e2dc8fd4c50c13ed387f35d0a38bf89a3e35"),
            ("1961-Kennedy.txt", "e77e52fdf3122abf372a21d473231c5139681f283dd1d06df21e665c0befba6d"),
            ("1965-Johnson.txt", "235ab1bc755b6429538819050849e0ad826cca9716e46ceda115bed7a9f3bbce"),
            ("1969-Nixon.txt", "1e4efdf499873a5a89212775805210a1a363ef0fd1e7680c9c69f0fbc219c2c8"),
            ("1973-Nixon.txt", "36d86c4c1d2c4dafce2300795c5581cc2b0a40b9078b91a61b7dd0bfb1761be1"),
            ("1977-Carter.txt", "ee15f6f96985b102ae19c890c4fcc2e4fcb404ad43f1d0ffc46562b838c487d5"),
            ("1981-Reagan.txt", "46f86824ac000cf7f822b29e838c6c54872a06e219f3229722c0bb101fcbe116"),
            ("1985-Reagan.txt", "526a130667a191806782a3bb3c9186cdd386aed9b0a335071d88fc4bf8509f94"),
            ("1989-Bush.txt", "7636e0e3bae0b67378d56a70f12885340fd93370c95bc52f1f0d5c2cafb0b3ed"),
            ("1993-Clinton.txt", "2003c2c6e77a0c743e67038416bd6d4ea471bcbc54f743c6ced2422ec99d9950"),
            ("1997-Clinton.txt", "7dbf3690f9bf8ba3393c73ca96df74a793a04ac2b6b04b6bf1a7756e80b8d70d"),
            ("2001-Bush.txt", "fecec0df824c345c04c52224d720e8535ec95a27f02598cc62d1f98ff919327a"),
            ("2005-Bush.txt", "e05fbef90e3dee2ec1bd819dda765d15266e6564ecb984693e1ac9b7ec097099"),
            ("README.nltk", "7c1f7ab415e31d6335c62551a3f54babb9e2211acfd0bc5dbe11d8431f72b768"),
        ),
        (("README.nltk", "README"),),
    ),
    PretrainDownload(
        "nltk/nltk",
        _NLTK_ZIP_COMMIT,
        "nltk_data/corpora/state_union.zip",
        "state_union",
        "us-presidential-addresses/state_union",
        (
            ("1945-Truman.txt", "508f873c8c64b4ee0040327df7ae06cff7d65bc0797e6e42d5d1b96c6c6c7122"),
            ("1946-Truman.txt", "60cf5765672653751189d99a8bb86123d5de92539bc9b355cf648fe6fbc99381"),
            ("1947-Truman.txt", "1f0978acab51bf2a6ebc102c33f7ddcc8d80ff7aa000d63c40f45d772b5a3679"),
            ("1948-Truman.txt", "e42be4d6aa00bb54261e0b1f97a395493ee5db29134b2281286ed89235e2a77f"),
            ("1949-Truman.txt", "b287e17eb5bcbc7089b176c1ad5faa6377cc9a8355bc7fb7b5788172185c226a"),
            ("1950-Truman.txt", "97fa03d9674d437d9d5e8734b2e4ea6a48ef4ca1062f15358a7721368787eaf4"),
            ("1951-Truman.txt", "7f509bb0b98b23ca47d9e4ff9e254713a929512d8c9121eea9b0e65b680c2ae4"),
            ("1953-Eisenhower.txt", "5fd71709187f321fa85068a9cd8bbe16dfaa192766692ae3776315aa0895c399"),
            ("1954-Eisenhower.txt", "82946a5251e69b1b27b6638d49e1833fb3f8e9641588a2be9ea101ada4331aae"),
            ("1955-Eisenhower.txt", "7b43e41d5bbf0986782270cf7ca8b239efc59b9122a747f027b32976f3bc8498"),
            ("1956-Eisenhower.txt", "8d7a5fd8a449a567c02c9fdb2f6dadf860c387a9551f8cf9b477a44940ba7283"),
            ("1957-Eisenhower.txt", "64ffd6bd519e6deb0813f09a81ee0e0dd765b9df6e8b572794717749896efcb3"),
            ("1958-Eisenhower.txt", "8d766a59bfcc4787657edbb5c4f0e55261aab142ff3a1f1f4850b4ff6e5e57f7"),
            ("1959-Eisenhower.txt", "4f99b19581194b499cabf6f47e8592c6c09f560db7e28e4290916803a42ce39a"),
            ("1960-Eisenhower.txt", "835943c0ba3dbfcad80da5772f64fb0020f884ba991ab25c62e96585e0d1fb28"),
            ("1961-Kennedy.txt", "6fae264eff28e0c6975c6628933ad11c52a441ccdbfe6e4790258e181c4658b0"),
            ("1962-Kennedy.txt", "452897c5593fc6129089f0b06effb4c490f31b34c3400e92236acf272e19aa48"),
            ("1963-Johnson.txt", "36710f0bb7afa2f8c9263522215e5c392af1e0df9862968a473f438f8c4c416a"),
            ("1963-Kennedy.txt", "25881ee6092b4a0713aa20fe26fa4e6a3f12263908ddec52f5ab2bd05db936df"),
            ("1964-Johnson.txt", "453df94297de6814321167f5c5b18180249cde338d9a97686a9558c859ae1745"),
            ("1965-Johnson-1.txt", "04c018c5426945a1a20e9e7e9e6c4b6a7eeb6fb566e86b535f5e2c2aabefb8ff"),
            ("1965-Johnson-2.txt", "d1128740e0340a5cf56f1d4ecd1c9824d7ea4330c793ac04c51f865af3699b5a"),
            ("1966-Johnson.txt", "1940bda8e9efe73c583ec1a78a8c0fb98a64e0acbf76572e7109beced6e51f99"),
            ("1967-Johnson.txt", "53adad365447d35f4ce24b05d2a1636508d19f054d6860829fb5a798ae24e0ea"),
            ("1968-Johnson.txt", "d9929eddcbe861755f2ec5c66c86a711b85201b357b2f3f4dcf3a02d4ec579a7"),
            ("1969-Johnson.txt", "f56fa3438fd5b5d7f2ad2e91695c11e9ece29801b9a8e822b9109e353c788396"),
            ("1970-Nixon.txt", "d0ed02f7ad0fbe28f2ea2b0781c29cafcc1cb467c37e8e2cc760f9004010ef7d"),
            ("1971-Nixon.txt", "eea9a84007f224a8d21eb9a246e926f8f44bf851c31c591d86bf58a346f1e31e"),
            ("1972-Nixon.txt", "ffb1bcf7053d162b60cb6a6188918e2c5b3beb455ac2ca3c37e3a3249e3c5aab"),
            ("1973-Nixon.txt", "8925db6365e10060e3800103f48e6bd99aaade65e4955e4a456e9b6a6ea85189"),
            ("1974-Nixon.txt", "959624a1421b2dce7ea61ca032ee13a0f57384500a98fa0892c53dac353a0aa4"),
            ("1975-Ford.txt", "0adbe87cefcb7c7e3e3fc7883c1fa74cd4e4a4ff3e73bf02bee472526fb64291"),
            ("1976-Ford.txt", "42f95817a920e47804c7b742d99e544c1ff968658949bd8516198782fbc2c6b3"),
            ("1977-Ford.txt", "adb16ddfd60c969d5e41e9c55e2e35872a3810a2cdbeab89c8367a7859740eb9"),
            ("1978-Carter.txt", "a56e193ef511712baa98ef1daac52477faee3223e5cde5e9c2e201190c12b0cd"),
            ("1979-Carter.txt", "32358f1bcf1f6ddd6f455a345fc323bbbd4b3713a42a01e84a79ff552734af99"),
            ("1980-Carter.txt", "ba93ef966ee5be9fc6941ff28268be973cda347482afde4f646bbc03d484a13c"),
            ("1981-Reagan.txt", "e5c7ae8dc2cba2b9a9d3fb22097fb6267a41cf2d1d4309bc548c4403066d8d9c"),
            ("1982-Reagan.txt", "70c088b2377dd4a5e9d75a2e3efdf86ca7212ed84d6ec12b09b0232422ba9256"),
            ("1983-Reagan.txt", "401795a56a94ae7a07a7c9660f3166a1bd2987d331450de521f068d5a43d72ea"),
            ("1984-Reagan.txt", "884f1b770018feb428dcc3038a7351dd5c723ff26f97d8f016d2d44457f9dc37"),
            ("1985-Reagan.txt", "b1b0f8901d67427d2513d3e6ca94085fce242ee0e44e0fe3b4c016c8b948a631"),
            ("1986-Reagan.txt", "668ba7f9959638386492a00cdac3c6b6853b7e666e044cc45ef876ad009956d2"),
            ("1987-Reagan.txt", "f514625a435fc9e60604096be250ba51cab229792bbf191d8557b9ccb9b61b86"),
            ("1988-Reagan.txt", "ec8b207e1c37efeca17d74c4af57549dee69a771b89de1cf2ff57d086baa854c"),
            ("1989-Bush.txt", "f9a5d83a7a1e7160cfcd74996d74d0a6732db344e9ea8ebcf06b9fdceefe9475"),
            ("1990-Bush.txt", "eef6d28335c71e4340e6771aaea93129ae8462a5148734ab801ecac35be4d164"),
            ("1991-Bush-1.txt", "607a47ed658be820181f0aff85a5f855eb0e76d3d78eced175693eb7f3e43a95"),
            ("1991-Bush-2.txt", "d0e60f53da72b6c8bb10c50331c4bbe096547a253c2dc1c4d544c6897010a9fa"),
            ("1992-Bush.txt", "8341bd6a7426a1bf5e6823fc4cc7557a648f8182ffde2504b230e64a77689323"),
            ("1993-Clinton.txt", "3df9edd3c632e81130a159c637ea924954738ffe52579b9ca801a5f11cd60bca"),
            ("1994-Clinton.txt", "bddff6449206fe5bf0fdea32059915977c4aa661c1c6a08ddfc58f79babb07a7"),
            ("1995-Clinton.txt", "ea896d98f744016071db021d732f04f054ccd2dc14cbfefcb0059742fee83ea5"),
            ("1996-Clinton.txt", "03a2263869c8ab799971733b219f4004dae227bc2d58560acd9bfb9a2f3e6eac"),
            ("1997-Clinton.txt", "983a61951e94b52a5daf7f0c72136c7419afc44e1b045ba7f7a44f6c95568140"),
            ("1998-Clinton.txt", "c24ee305baabfa6ffda0252690a96bebb6625d0fa3dbe4691a48a5733ae1a562"),
            ("1999-Clinton.txt", "1e9a77b739d385a24749254337534a8f204145fdcedea94ae53a8cc97f39690b"),
            ("2000-Clinton.txt", "865d92d19a0264f6b991290864f52324c04123b8bc91429a8ba3a5acb98c8f18"),
            ("2001-GWBush-1.txt", "58c445ba8eebc09ae604d3429216d602476acec2e4f93a5ad4e8a056d78aa519"),
            ("2001-GWBush-2.txt", "9a611db1b26fb3bf38cd6d46ddc0643b6de421950be25a223a2614871e67947c"),
            ("2002-GWBush.txt", "6771542b59b713f5f2c3099017b329ebbdc740ca9575044ec6c26c63675b7eed"),
            ("2003-GWBush.txt", "6dfb2a0192b731bbd9d505e46cc16aa9e7f9b7839dd14cdd192a87496e717618"),
            ("2004-GWBush.txt", "84abd1f08c9078d072c3be8670f8c68b4944ea8f0c2d9c2b925b988e9fdca4c7"),
            ("2005-GWBush.txt", "68da919ac9384ba96e5a719730aba71946ee09efba48d8b315138559fa2a8781"),
            ("2006-GWBush.txt", "ce65edcf0b8002cc307d63585b8d96597fc9ea35f3172ae01cab4fed69f8c3a7"),
            ("README.nltk", "6c93ead82c145de7adf054f1d806dad85ac637f34c9d0bc59c8dc0c37f442a94"),
        ),
        (("README.nltk", "README"),),
    ),
    PretrainDownload(
        "pimondontknow/Privacy_FL_IoT",
        _WIKITEXT_COMMIT,
        "data/wikitext-2",
        None,
        "wikitext-2-valid-test",
        (
            ("wiki.test.tokens", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
            ("wiki.valid.tokens", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        ),
    ),
)


def _by_hand(folder: Path) -> str:
    return (
        f"or copy the pretrain/ folder by hand into {folder} from a machine that has it "
        "(provenance: pretrain/SOURCES.md)."
    )


def _stream_to_temp(url: str, tmp_dir: Path, folder: Path, timeout: float) -> tuple[Path, int, str]:
    return stream_to_temp(url, tmp_dir, timeout, _by_hand(folder))


def _install(tmp: Path, actual: str, expected: str, dest: Path, what: str, folder: Path) -> None:
    """Rename ``tmp`` to ``dest`` if its SHA-256 is ``expected``; else remove it and raise DataError."""
    if actual != expected:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{what} has the wrong checksum for {dest.relative_to(folder).as_posix()} (SHA-256 expected "
            f"{expected}, got {actual}); nothing was saved for it. Try again later or with another base URL, "
            + _by_hand(folder)
        )
    os.replace(tmp, dest)


def _extract_members(zip_path: Path, url: str, wanted: list[tuple[str, Path, str]], folder: Path) -> None:
    """Extract (member, dest, SHA-256) from the downloaded archive, each via temp file + rename."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = set(zf.namelist())
            for member, dest, _ in wanted:
                if member not in names:
                    raise DataError(
                        f"Zip archive {url} has no member {member!r} (for "
                        f"{dest.relative_to(folder).as_posix()}); nothing was saved for it. "
                        + _by_hand(folder)
                    )
            for member, dest, expected in wanted:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
                tmp = Path(tmp_name)
                try:
                    h = hashlib.sha256()
                    with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
                    _install(tmp, h.hexdigest(), expected, dest, f"Member {member!r} of {url}", folder)
                finally:
                    tmp.unlink(missing_ok=True)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise DataError(
            f"Downloaded {url} is not a valid zip archive ({e}). Try again later or with another base URL, "
            + _by_hand(folder)
        ) from e


def fetch_pretrain(
    root: str | Path | None = None,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 60,
) -> Path:
    """Download the pre-training corpus into ``<root>/pretrain/`` and verify it; returns that folder.

    Every file of :data:`PRETRAIN_MANIFEST` is fetched from ``{base_url}/{repo}/{commit}/{path}``
    (``base_url`` defaults to :data:`PRETRAIN_URL`, GitHub raw; pass a mirror's base instead); a zip archive
    is downloaded once and the needed members extracted. Each file is written to a temporary file beside
    its target and renamed only after its SHA-256 matched, so no partial or wrong file is ever left
    behind. Files already present with the right checksum are skipped unless ``force`` (an archive is not
    downloaded when none of its members is needed). Finally ``pretrain/SHA256SUMS`` is written, so
    :func:`pretrain_files` verifies the result. Prints one progress line per download.
    """
    folder = _pretrain_dir(root)
    base = (base_url or PRETRAIN_URL).rstrip("/")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for dl in PRETRAIN_MANIFEST:
            (folder / dl.local_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create {e.filename or folder}: {e.strerror}. Choose a writable data root (FEDGEN_DATA)."
        ) from e
    for dl in PRETRAIN_MANIFEST:
        target = folder / dl.local_dir
        renames = dict(dl.renames)
        todo = [
            (name, expected)
            for name, expected in dl.files
            if force or not ((target / name).is_file() and sha256_file(target / name) == expected)
        ]
        skipped = len(dl.files) - len(todo)
        if skipped:
            print(f"pretrain {dl.local_dir}/: {skipped} file(s) already present and verified, skipped")
        if not todo:
            continue
        source_url = f"{base}/{dl.repo}/{dl.commit}/{dl.path}"
        if dl.member_dir is None:
            for name, expected in todo:
                url = f"{source_url}/{renames.get(name, name)}"
                dest = target / name
                tmp, size, actual = _stream_to_temp(url, target, folder, timeout)
                try:
                    _install(tmp, actual, expected, dest, f"Downloaded {url}", folder)
                finally:
                    tmp.unlink(missing_ok=True)
                print(f"pretrain {dl.local_dir}/{name}: downloaded {url} ({size:,} bytes), SHA-256 verified")
        else:
            wanted = [
                (f"{dl.member_dir}/{renames.get(name, name)}", target / name, expected)
                for name, expected in todo
            ]
            tmp, size, _ = _stream_to_temp(source_url, target, folder, timeout)
            try:
                _extract_members(tmp, source_url, wanted, folder)
            finally:
                tmp.unlink(missing_ok=True)
            print(
                f"pretrain {dl.local_dir}/: downloaded {source_url} ({size:,} bytes), "
                f"{len(wanted)} member(s) extracted and SHA-256 verified"
            )
    _write_sums(folder)
    return folder


def _write_sums(folder: Path) -> None:
    """Write ``pretrain/SHA256SUMS`` (same format and order as the canonical one) via temp file + rename."""
    sums = {f"{dl.local_dir}/{name}": expected for dl in PRETRAIN_MANIFEST for name, expected in dl.files}
    text = "".join(f"{sums[rel]}  ./{rel}\n" for rel in sorted(sums))
    dest = folder / "SHA256SUMS"
    if dest.is_file() and dest.read_text(encoding="utf-8") == text:
        return
    fd, tmp_name = tempfile.mkstemp(prefix=".SHA256SUMS.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
